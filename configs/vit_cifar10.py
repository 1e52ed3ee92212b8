"""CIFAR-10, ViT-B/16 from Hugging Face `google/vit-base-patch16-224` with a new 10-class head, 10% per-class
forget set; LoTUS lr 1e-6, 3 epochs, batch 32, alpha 2; every baseline 3 epochs (docs/definitions.md §3, §4).

The 32 x 32 images are resized to 224 x 224 on the device (`model.image_size=224`, bilinear) and normalised
with mean/std 0.5 as the Hugging Face weights expect; LayerNorm epsilon 1e-12 as in the checkpoint's
config.json. Convert the downloaded checkpoint folder (config.json + model.safetensors) once:

    python -m lotus_jax.convert --input google-vit-base-patch16-224/ --output ckpt/vit_b16_c10 --num_classes 10

The paper's original model is that backbone fine-tuned on CIFAR-10 (SGD lr 1e-4, momentum 0.9, batch 64, up
to 30 epochs) and its gold model the same fine-tuning on the retain set: the `train`/`retrain` stages do both,
starting from the converted checkpoint (`train.init_checkpoint`, `retrain.init_checkpoint`):

    python -m lotus_jax.main --config configs/vit_cifar10.py --workdir runs/vit_cifar10 \
        --config.data.data_dir=/path/to/tfds --config.stages=train,retrain,unlearn,evaluate \
        --config.train.init_checkpoint=ckpt/vit_b16_c10 --config.retrain.init_checkpoint=ckpt/vit_b16_c10

Or pass models fine-tuned elsewhere with `--config.original_checkpoint=... [--config.gold_checkpoint=...]`
and the default stages `unlearn,evaluate` (without a gold model RF-JSD stands in for JSD). CIFAR-10 is read from tfds (`tfds build cifar10 --file_format array_record`) or, with
`--config.data.source=folder --config.data.path=/path/to/cifar10-jpeg.tar.gz`, from an image folder.

CPU-sized variant: scikit-learn's embedded digits (no download), ViT-Ti with 8 x 8 patches at 32 x 32, random
initialisation, original and gold models trained for 3 epochs, 2 epochs per method (about 9 minutes on 2
shared CPU cores with all nine methods, mostly compiling each method's steps; about 3 with
`--config.methods=lotus`):

    python -m lotus_jax.main --config configs/vit_cifar10.py:small --workdir runs/vit_cifar10_small
"""

from lotus_jax.config import base_config, link_epochs, set_method_epochs


def get_config(variant: str = ""):
    c = base_config()
    c.stages = "unlearn,evaluate"
    c.data.source = "tfds"
    c.data.name = "cifar10"
    c.data.mean, c.data.std = (0.5,), (0.5,)
    c.data.augment = "crop_flip"
    c.data.unlearn_augment = True  # as configs/cifar10.py: the reference unlearns through the training transform
    c.data.forget.mode = "fraction"
    c.data.forget.fraction = 0.1
    c.model.name = "vit"
    c.model.variant = "B/16"
    c.model.layernorm_epsilon = 1e-12  # Hugging Face ViT
    c.model.image_size = 224
    for stage in ("train", "retrain"):  # the paper's fine-tuning recipe, from `init_checkpoint` (see above)
        c[stage].epochs = 30
        c[stage].batch_size = 64
        c[stage].optimizer.name = "sgd"
        c[stage].optimizer.lr = 1e-4
        c[stage].optimizer.momentum = 0.9
        c[stage].optimizer.weight_decay = 0.0
        c[stage].optimizer.schedule = "constant"
        c[stage].optimizer.warmup_epochs = 0
    set_method_epochs(c, 3)
    c.lotus.alpha = 2.0
    c.lotus.optimizer.lr = 1e-6
    c.lotus.batch_size = 32
    c.eval.batch_size = 256
    if variant == "small":
        c.stages = "train,retrain,unlearn,evaluate"
        c.data.source = "digits"
        c.data.name = None
        c.data.augment = "none"  # 8 x 8 digits: shifts or flips change the class evidence
        c.model.variant = "Ti/8"
        c.model.layernorm_epsilon = None
        c.model.image_size = 32
        for stage in ("train", "retrain"):
            c[stage].epochs = 3
            c[stage].optimizer.name = "adam"
            c[stage].optimizer.lr = 1e-3
            c[stage].optimizer.momentum = 0.0
        set_method_epochs(c, 2)
    elif variant:
        raise ValueError(f"unknown config variant {variant!r}; valid: '' or 'small'")
    return link_epochs(c)
