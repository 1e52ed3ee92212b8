"""CIFAR-10, ResNet-18 (CIFAR variant), 10% per-class forget set, the paper's hyper-parameters
(docs/definitions.md §3, §7).

    python -m lotus_jax.main --config configs/cifar10.py --workdir runs/cifar10

From tfds by default (prepared with `tfds build cifar10 --file_format array_record`); for an image folder
or the shared JPEG archive:

    python -m lotus_jax.main --config configs/cifar10.py --workdir runs/cifar10 \
        --config.data.source=folder --config.data.path=/path/to/cifar10-jpeg.tar.gz

CPU-sized variant (width 16, 8 training epochs, 5 per method):

    python -m lotus_jax.main --config configs/cifar10.py:small --workdir runs/cifar10_small \
        --config.data.source=folder --config.data.path=/path/to/cifar10-jpeg.tar.gz
"""

from lotus_jax.config import base_config, link_epochs, set_method_epochs, set_training

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


def get_config(variant: str = "", num_classes_name: str = "cifar10", alpha: float = 8.0):
    c = base_config()
    c.data.source = "tfds"
    c.data.name = num_classes_name
    c.data.mean, c.data.std = CIFAR_MEAN, CIFAR_STD
    c.data.augment = "crop_flip"
    c.data.unlearn_augment = True  # the reference unlearns through the training transform (docs/definitions.md §4)
    c.data.forget.fraction = 0.1
    c.model.name = "resnet18"
    c.model.width = 64
    c.lotus.alpha = alpha
    if variant == "small":
        c.model.width = 16
        set_training(c, epochs=8, batch_size=256, lr=0.05)
        set_method_epochs(c, 5)  # every method LoTUS's budget, as at full size
    elif variant:
        raise ValueError(f"unknown config variant {variant!r}; valid: '' or 'small'")
    return link_epochs(c)
