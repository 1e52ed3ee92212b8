"""MUFAC (Korean faces, 8 age groups a..h), ResNet-18 (CIFAR variant) at MUFAC's 128 x 128 resolution, the
fixed forget set of the paper (the first 1,062 rows of the train CSV), separate val and test sets, LoTUS
alpha 2, lr 1e-4, 10 epochs, batch 128 (docs/definitions.md §2, §3); original and gold models with the recipe of
docs/definitions.md §7.

MUFAC ships as CSVs (`family_id, person_id, age_class, image_path`) next to image folders
(custom_korean_family_dataset_resolution_128/: custom_{train,val,test}_dataset.csv, {train,val,test}_images/).
Turn it once into the folder tree the folder source reads, plus the forget ids:

    python configs/mufac.py custom_korean_family_dataset_resolution_128 /data/mufac

This copies every image of CSV row `r` of split `s` to `/data/mufac/<s>/<age_class>/<r:05d>.<ext>` and writes
`/data/mufac/forget_ids.txt`: the training-source ids of the first 1,062 rows of the train CSV. (The folder
source orders training images by class, then by file name, so row `r`'s id is its rank in (age_class, r)
order.) Options: `--train_csv NAME` for another (cleaned) train CSV in the same folder, `--forget_rows N`.
Then:

    python -m lotus_jax.main --config configs/mufac.py --workdir runs/mufac --config.data.path=/data/mufac

`data.forget.ids_file` follows `data.path` (`<path>/forget_ids.txt`) unless set; set it when `data.path` is
a .tar.gz of the tree. Val (`D_u`) is the `val` folder and test the `test` folder (`data.heldout_split=val`,
`data.test_split=test`): nothing is drawn, so the whole split is the same for every seed. The images keep
their 128 x 128 size (no resize on the host or the device).

CPU-sized variant (ResNet-18 of width 8 fed 32 x 32 images resized on the device, a few epochs; the forget
ids still refer to the whole train folder, so no `train_per_class` here):

    python -m lotus_jax.main --config configs/mufac.py:small --workdir runs/mufac_small \
        --config.data.path=/data/mufac
"""

import argparse
import csv
import shutil
from pathlib import Path

from lotus_jax.config import base_config, link_epochs, small_resnet_variant

FORGET_ROWS = 1062  # the paper's forget set: the first 1,062 rows of the train CSV
SPLITS = ("train", "val", "test")


def get_config(variant: str = ""):
    c = base_config()
    c.data.source = "folder"
    c.data.path = "data/mufac"
    c.data.train_split = "train"
    c.data.heldout_split = "val"  # D_u
    c.data.test_split = "test"  # a folder of its own: val and test are not drawn from one held-out set
    c.data.channels = 3
    c.data.mean, c.data.std = (0.5,), (0.5,)
    c.data.augment = "crop_flip"
    c.data.unlearn_augment = True  # as the CIFAR configs: unlearning batches go through the training transform
    c.data.forget.mode = "ids"
    c.data.forget.ids_file = c.data.get_ref("path") + "/forget_ids.txt"
    c.model.name = "resnet18"
    c.model.width = 64
    c.lotus.alpha = 2.0
    c.lotus.optimizer.lr = 1e-4
    c.lotus.epochs = 10
    c.lotus.batch_size = 128
    if variant == "small":
        small_resnet_variant(c)
    elif variant:
        raise ValueError(f"unknown config variant {variant!r}; valid: '' or 'small'")
    return link_epochs(c)


def prepare(src: str | Path, dst: str | Path, train_csv: str = "custom_train_dataset.csv",
            forget_rows: int = FORGET_ROWS) -> Path:
    """Builds `dst/{train,val,test}/<age_class>/<row:05d>.<ext>` from MUFAC's CSVs and image folders in `src`
    and writes `dst/forget_ids.txt` (the training-source ids of the first `forget_rows` train rows); returns
    the ids file."""
    src, dst = Path(src), Path(dst)
    ids_file = dst / "forget_ids.txt"
    for split in SPLITS:
        table = src / (train_csv if split == "train" else f"custom_{split}_dataset.csv")
        if not table.is_file():
            raise SystemExit(f"error: {table} does not exist; pass the unzipped MUFAC folder")
        with open(table, newline="") as f:
            rows = list(csv.DictReader(f))
        for r, row in enumerate(rows):
            image = src / f"{split}_images" / row["image_path"]
            out = dst / split / row["age_class"] / f"{r:05d}{Path(row['image_path']).suffix.lower()}"
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(image, out)
        if split == "train":
            if not 0 < forget_rows < len(rows):
                raise SystemExit(f"error: --forget_rows {forget_rows} must be in [1, {len(rows) - 1}]")
            order = sorted(range(len(rows)), key=lambda r: (rows[r]["age_class"], r))  # the folder source's order
            ids = sorted(i for i, r in enumerate(order) if r < forget_rows)
            ids_file.write_text("\n".join(map(str, ids)) + "\n")
    return ids_file


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="MUFAC CSVs -> the folder tree and forget ids of configs/mufac.py")
    parser.add_argument("src", help="the unzipped custom_korean_family_dataset_resolution_128 folder")
    parser.add_argument("dst", help="where to write the tree (then --config.data.path=DST)")
    parser.add_argument("--train_csv", default="custom_train_dataset.csv")
    parser.add_argument("--forget_rows", type=int, default=FORGET_ROWS)
    args = parser.parse_args()
    print(f"wrote {prepare(args.src, args.dst, args.train_csv, args.forget_rows)}; "
          f"run with --config.data.path={args.dst}")
