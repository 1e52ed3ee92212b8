"""ImageNet-1k, ViT-B/16, 5 forget / 45 retain images per class, batch 256, lr 1e-6, 3 epochs (every method),
alpha 2.

    python -m lotus_jax.main --config configs/imagenet.py --workdir runs/imagenet \
        --config.data.data_dir=/path/to/tfds --config.original_checkpoint=/path/to/vit_b16_orbax

There is no gold model at this scale (stages train,retrain are not run): `f_orig` is the given checkpoint
and RF-JSD replaces JSD. The dataset is `imagenet2012` prepared by tfds in array_record format (see the
README), decoded on `data.decode_workers` threads per batch and preprocessed as torchvision's ViT-B/16
weights expect: shorter side resized to 256 (bilinear, antialiased), central 224 x 224 crop, ImageNet
mean/std. The forget and retain images (5k + 45k) are decoded once into `<workdir>/cache/train.npy` and
read from there by every method and evaluation (`data.cache_unlearning`). Weights from
google-research/vision_transformer (or Hugging Face google/vit-base-patch16-224) expect a plain resize to 224
and mean/std 0.5 instead:

    --config.data.crop=resize --config.data.mean="(0.5, 0.5, 0.5)" --config.data.std="(0.5, 0.5, 0.5)"

CPU-sized variant: ViT-Ti with 8 x 8 patches at 32 px (resized to 36, central crop), 20 training images per
class (2 forget, 18 retain) and 5 validation images per class, the original trained for 1 epoch from a
random initialisation unless `original_checkpoint` is given. It reads the same tfds `imagenet2012` (every
training label once, to pick the 20 per class), so it needs the prepared data:

    python -m lotus_jax.main --config configs/imagenet.py:small --workdir runs/imagenet_small \
        --config.data.data_dir=/path/to/tfds
"""

from lotus_jax.config import base_config, link_epochs, set_method_epochs

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def get_config(variant: str = ""):
    c = base_config()
    c.stages = "unlearn,evaluate"
    c.data.source = "tfds"
    c.data.name = "imagenet2012"
    c.data.heldout_split = "validation"
    c.data.crop = "center"
    c.data.resize_size = 256
    c.data.crop_size = 224
    c.data.interpolation = "bilinear"
    c.data.mean, c.data.std = IMAGENET_MEAN, IMAGENET_STD
    c.data.forget.mode = "per_class"
    c.data.forget.sampling = "random"
    c.data.forget.per_class = 5
    c.data.forget.retain_per_class = 45
    c.model.name = "vit"
    c.model.variant = "B/16"
    set_method_epochs(c, 3)
    c.lotus.batch_size = 256
    c.lotus.alpha = 2.0
    c.lotus.optimizer.lr = 1e-6
    c.eval.batch_size = 256
    if variant == "small":
        c.stages = "train,unlearn,evaluate"
        c.data.resize_size = 36
        c.data.crop_size = 32
        c.data.train_per_class, c.data.heldout_per_class = 20, 5
        c.data.forget.per_class = 2
        c.data.forget.retain_per_class = 18
        c.model.variant = "Ti/16"
        c.model.patch_size = 8
        c.train.epochs = 1
        c.lotus.batch_size = 32
        c.eval.batch_size = 64
    elif variant:
        raise ValueError(f"unknown config variant {variant!r}; valid: '' or 'small'")
    return link_epochs(c)
