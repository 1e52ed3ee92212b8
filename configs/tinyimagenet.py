"""Tiny-ImageNet (200 classes, 64 x 64), ResNet-18 (CIFAR variant), 10% per-class forget set, the official
val set halved per class into val and test (stratified, seeded), LoTUS alpha 2, lr 1e-4, 10 epochs, batch 128
(docs/definitions.md §2, §3); original and gold models with the docs/definitions.md §7 recipe.

The data is read by the folder source, which needs `<split>/<class>/<image>`. The official zip
(tiny-imagenet-200.zip) keeps training images one level deeper (`train/<wnid>/images/*.JPEG`) and the val
images flat (`val/images/*.JPEG` with their classes in `val/val_annotations.txt`). Rearrange it once, in
place (it moves files; running it again changes nothing):

    python configs/tinyimagenet.py /data/tiny-imagenet-200

which leaves `train/<wnid>/*.JPEG` (500 per class) and `val/<wnid>/*.JPEG` (50 per class); the unlabelled
`test/` folder is not read. Then:

    python -m lotus_jax.main --config configs/tinyimagenet.py --workdir runs/tinyimagenet \
        --config.data.path=/data/tiny-imagenet-200

(`data.path` may also be a .tar.gz of the rearranged tree.) Every image is decoded into memory once (about
1.3 GB); greyscale JPEGs are converted to RGB (`data.channels=3`). Classes are the sorted wnids.

CPU-sized variant (first 20 training and 10 val images per class, ResNet-18 of width 8 fed 32 x 32 images
resized on the device, a few epochs; a couple of minutes on a synthetic tree of a few classes):

    python -m lotus_jax.main --config configs/tinyimagenet.py:small --workdir runs/tinyimagenet_small \
        --config.data.path=/data/tiny-imagenet-200
"""

import sys
from pathlib import Path

from lotus_jax.config import base_config, link_epochs, small_resnet_variant

TINY_MEAN = (0.4802, 0.4481, 0.3975)  # Tiny-ImageNet training-set statistics
TINY_STD = (0.2770, 0.2691, 0.2821)


def get_config(variant: str = ""):
    c = base_config()
    c.data.source = "folder"
    c.data.path = "data/tiny-imagenet-200"
    c.data.train_split = "train"
    c.data.heldout_split = "val"  # official val set, halved per class (seeded) into val and test
    c.data.val_fraction = 0.5
    c.data.channels = 3
    c.data.mean, c.data.std = TINY_MEAN, TINY_STD
    c.data.augment = "crop_flip"
    c.data.unlearn_augment = True  # as the CIFAR configs: unlearning batches go through the training transform
    c.data.forget.mode = "fraction"
    c.data.forget.fraction = 0.1
    c.model.name = "resnet18"
    c.model.width = 64
    c.lotus.alpha = 2.0
    c.lotus.optimizer.lr = 1e-4
    c.lotus.epochs = 10
    c.lotus.batch_size = 128
    if variant == "small":
        c.data.train_per_class = 20
        c.data.heldout_per_class = 10
        small_resnet_variant(c)
    elif variant:
        raise ValueError(f"unknown config variant {variant!r}; valid: '' or 'small'")
    return link_epochs(c)


def rearrange(root: str | Path) -> None:
    """Turns the official Tiny-ImageNet layout under `root` into the `split/class/image` tree the folder source
    reads: `train/<wnid>/images/*` -> `train/<wnid>/*`, `val/images/*` -> `val/<wnid>/*` (classes from
    `val/val_annotations.txt`). Moves files in place; already rearranged parts are left as they are."""
    root = Path(root)
    if not (root / "train").is_dir():
        raise SystemExit(f"error: {root / 'train'} does not exist; pass the unzipped tiny-imagenet-200 folder")
    for images in sorted((root / "train").glob("*/images")):
        for f in images.iterdir():
            f.rename(images.parent / f.name)
        images.rmdir()
    annotations = root / "val" / "val_annotations.txt"
    if (root / "val" / "images").is_dir():
        for line in annotations.read_text().splitlines():
            if not line.strip():
                continue
            name, wnid = line.split("\t")[:2]
            src = root / "val" / "images" / name
            if src.exists():
                (root / "val" / wnid).mkdir(exist_ok=True)
                src.rename(root / "val" / wnid / name)
        if not any((root / "val" / "images").iterdir()):
            (root / "val" / "images").rmdir()


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python configs/tinyimagenet.py <unzipped tiny-imagenet-200 folder>")
    rearrange(sys.argv[1])
    print(f"rearranged {sys.argv[1]}: pass it as --config.data.path")
