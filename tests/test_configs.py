"""The shipped configs: every file in configs/ (and its `:small` variant) loads and validates, the new protocol
configs hold the paper's settings and their commands, and the `:small` variants of the Tiny-ImageNet, MUFAC
and ViT/CIFAR-10 configs run end to end through `lotus_jax.main.run` on tiny synthetic data written here
(JPEG trees in the datasets' own download layouts, turned into folder trees by the configs' helpers)."""

from __future__ import annotations

import csv
import importlib.util
import json
import time
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from PIL import Image

from lotus_jax import config, main
from lotus_jax.data import load_dataset

ROOT = Path(__file__).resolve().parents[1]
CONFIG_FILES = sorted(p for p in (ROOT / "configs").glob("*.py") if p.name != "__init__.py")
NEW_CONFIGS = ("tinyimagenet", "mufac", "vit_cifar10")
# Each run is the whole pipeline (original, gold, LoTUS, evaluation, report): about half a minute on 2 CPU cores,
# mostly compilation and epoch checkpoints. The baselines' wiring is tested in tests/methods/ and tests/test_main.py.
RUN_METHODS = "lotus"


def load_config_module(name: str) -> ModuleType:
    path = ROOT / "configs" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"_configs_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- every config loads and validates --------------------------------------------------------------------

@pytest.mark.parametrize("variant", ["", "small"])
@pytest.mark.parametrize("name", [p.stem for p in CONFIG_FILES])
def test_every_config_and_small_variant_validates(name, variant):
    cfg = load_config_module(name).get_config(variant)
    config.validate(cfg)
    assert set(config.leaves(cfg)) == set(config.leaves(config.base_config())), "a config adds or drops keys"


def test_the_new_configs_are_shipped():
    assert {f"{n}.py" for n in NEW_CONFIGS} <= {p.name for p in CONFIG_FILES}


@pytest.mark.parametrize("name", NEW_CONFIGS)
def test_unknown_variant_is_refused(name):
    with pytest.raises(ValueError, match="unknown config variant 'tiny'"):
        load_config_module(name).get_config("tiny")


@pytest.mark.parametrize("name", NEW_CONFIGS)
def test_docstring_holds_the_commands(name):
    doc = load_config_module(name).__doc__
    assert f"python -m lotus_jax.main --config configs/{name}.py --workdir" in doc
    assert f"python -m lotus_jax.main --config configs/{name}.py:small --workdir" in doc


# -- the protocols (docs/definitions.md §2, §3) ----------------------------------------------------------

def _method_epochs(cfg) -> set[int]:
    return {cfg[m].epochs for m in config.split_names(cfg.methods) if "epochs" in cfg[m]}


def test_tinyimagenet_protocol():
    c = load_config_module("tinyimagenet").get_config()
    assert (c.data.source, c.data.heldout_split, c.data.test_split, c.data.val_fraction) == ("folder", "val", None,
                                                                                              0.5)
    assert (c.data.forget.mode, c.data.forget.fraction, c.data.channels) == ("fraction", 0.1, 3)
    assert (c.model.name, c.model.width, c.model.image_size) == ("resnet18", 64, None)
    assert (c.lotus.alpha, c.lotus.optimizer.lr, c.lotus.epochs, c.lotus.batch_size) == (2.0, 1e-4, 10, 128)
    assert _method_epochs(c) == {10}
    s = load_config_module("tinyimagenet").get_config("small")
    assert (s.model.width, s.model.image_size, s.data.train_per_class, s.data.heldout_per_class) == (8, 32, 20, 10)


def test_mufac_protocol():
    c = load_config_module("mufac").get_config()
    assert (c.data.source, c.data.heldout_split, c.data.test_split) == ("folder", "val", "test")
    assert (c.data.forget.mode, c.data.forget.ids_file) == ("ids", "data/mufac/forget_ids.txt")
    c.data.path = "/elsewhere/mufac"
    assert c.data.forget.ids_file == "/elsewhere/mufac/forget_ids.txt"  # follows data.path unless set
    c.data.forget.ids_file = "/ids.txt"
    assert c.data.forget.ids_file == "/ids.txt"
    assert (c.model.name, c.model.width, c.model.image_size) == ("resnet18", 64, None)  # MUFAC's own 128 x 128
    assert (c.lotus.alpha, c.lotus.optimizer.lr, c.lotus.epochs, c.lotus.batch_size) == (2.0, 1e-4, 10, 128)
    assert load_config_module("mufac").get_config("small").data.train_per_class is None  # ids index the full set


def test_vit_cifar10_protocol():
    c = load_config_module("vit_cifar10").get_config()
    assert (c.model.name, c.model.variant, c.model.image_size, c.model.layernorm_epsilon) == ("vit", "B/16", 224,
                                                                                              1e-12)
    assert (tuple(c.data.mean), tuple(c.data.std), c.data.name) == ((0.5,), (0.5,), "cifar10")
    assert (c.lotus.alpha, c.lotus.optimizer.lr, c.lotus.epochs, c.lotus.batch_size) == (2.0, 1e-6, 3, 32)
    assert _method_epochs(c) == {3} and c.scrub.msteps == 1
    assert (c.train.optimizer.name, c.train.optimizer.lr, c.train.batch_size, c.train.epochs) == ("sgd", 1e-4, 64, 30)
    assert c.stages == "unlearn,evaluate"
    s = load_config_module("vit_cifar10").get_config("small")
    assert (s.data.source, s.model.variant, s.model.image_size) == ("digits", "Ti/8", 32)


# -- the :small variants run end to end on synthetic data ------------------------------------------------

def _jpeg(path: Path, size: int, label: int, rng: np.random.Generator) -> None:
    """A noisy image whose colour says its class (so a few epochs learn something)."""
    colour = np.array([(label * 67) % 256, (label * 139 + 60) % 256, (label * 29 + 120) % 256], np.float32)
    img = np.clip(colour + rng.normal(0, 40, (size, size, 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path, quality=90)


def _run_small(name: str, workdir: Path, **overrides) -> dict:
    """Runs `configs/<name>.py:small` with `overrides` (dotted keys as `a__b`) and RUN_METHODS; checks
    metrics.json and report.md."""
    cfg = load_config_module(name).get_config("small")
    cfg.methods = RUN_METHODS
    cfg.mesh.data = 1  # a CPU's one device, not the test session's 8 fake ones
    for key, value in overrides.items():
        *path, leaf = key.split("__")
        section = cfg
        for part in path:
            section = section[part]
        section[leaf] = value
    start = time.perf_counter()
    metrics = main.run(cfg, workdir)
    seconds = time.perf_counter() - start
    print(f"{name}:small ran in {seconds:.1f}s")
    saved = json.loads((workdir / "metrics.json").read_text())
    assert set(saved["models"]) == {"original", "gold", *config.split_names(RUN_METHODS)}
    for model, m in saved["models"].items():
        assert "failed" not in m, (model, m.get("failed"))
        assert 0.0 <= m["acc_forget"] <= 1.0 and 0.0 <= m["acc_test"] <= 1.0, model
    assert (workdir / "report.md").exists()
    return metrics


def test_tinyimagenet_small_runs_on_the_official_layout(tmp_path):
    """A synthetic tiny-imagenet-200 in the zip's layout (train/<wnid>/images, flat val/images with
    val_annotations.txt), rearranged by the config's helper, then the :small run."""
    root, rng = tmp_path / "tiny-imagenet-200", np.random.default_rng(0)
    wnids = ["n01443537", "n01629819", "n01641577", "n01644900"]
    annotations = []
    for c, wnid in enumerate(wnids):
        (root / "train" / wnid).mkdir(parents=True)
        (root / "train" / wnid / f"{wnid}_boxes.txt").write_text("")
        for i in range(10):
            _jpeg(root / "train" / wnid / "images" / f"{wnid}_{i}.JPEG", 64, c, rng)
        for i in range(6):
            name = f"val_{c * 6 + i}.JPEG"
            _jpeg(root / "val" / "images" / name, 64, c, rng)
            annotations.append(f"{name}\t{wnid}\t0\t0\t63\t63")
    (root / "val" / "val_annotations.txt").write_text("\n".join(annotations) + "\n")
    _jpeg(root / "test" / "images" / "test_0.JPEG", 64, 0, rng)  # unlabelled: never read
    tiny = load_config_module("tinyimagenet")
    tiny.rearrange(root)
    tiny.rearrange(root)  # running it again changes nothing
    assert len(list((root / "train" / wnids[0]).glob("*.JPEG"))) == 10 and not (root / "val" / "images").exists()
    assert sorted(p.name for p in (root / "val").iterdir() if p.is_dir()) == wnids

    workdir = tmp_path / "run"
    _run_small("tinyimagenet", workdir, data__path=str(root))
    with np.load(workdir / "splits.npz") as z:
        assert (len(z["forget"]), len(z["retain"]), len(z["val"]), len(z["test"])) == (4, 36, 12, 12)


def _write_mufac(src: Path, rng: np.random.Generator) -> dict[str, list[dict]]:
    """A synthetic MUFAC download: custom_{split}_dataset.csv and {split}_images/ (3 age classes, 128 px)."""
    tables = {}
    for split, n in (("train", 36), ("val", 9), ("test", 12)):
        rows = []
        for r in range(n):
            age = "abc"[(r * 7) % 3]  # classes interleaved in CSV order, as in MUFAC
            name = f"F{r:04d}_AGE_D_{split}_{age}{r}.jpg"
            _jpeg(src / f"{split}_images" / name, 128, "abc".index(age), rng)
            rows.append({"family_id": f"F{r:04d}", "person_id": "D", "age_class": age, "image_path": name})
        with open(src / f"custom_{split}_dataset.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        tables[split] = rows
    return tables


def test_mufac_small_runs_with_its_forget_rows_and_separate_val_and_test(tmp_path):
    tables = _write_mufac(tmp_path / "custom_korean_family_dataset_resolution_128", np.random.default_rng(1))
    tree = tmp_path / "mufac"
    ids_file = load_config_module("mufac").prepare(tmp_path / "custom_korean_family_dataset_resolution_128", tree,
                                                   forget_rows=6)
    assert ids_file == tree / "forget_ids.txt"

    workdir = tmp_path / "run"
    _run_small("mufac", workdir, data__path=str(tree))
    with np.load(workdir / "splits.npz") as z:
        forget, val, test = z["forget"], z["val"], z["test"]
    # The forget set is exactly the first 6 rows of the train CSV (files are named by row number).
    cfg = load_config_module("mufac").get_config("small")
    cfg.data.path = str(tree)
    ds = load_dataset(cfg.data)
    assert sorted(int(Path(ds.train.describe(int(i))).stem) for i in forget) == list(range(6))
    assert [ds.train.describe(int(i)).split("/")[1] for i in forget] == sorted(
        tables["train"][r]["age_class"] for r in range(6))
    # Val is the val folder and test the test folder, each example once.
    np.testing.assert_array_equal(val, np.arange(9))
    np.testing.assert_array_equal(test, np.arange(9, 21))
    assert {ds.heldout.describe(int(i)).split("/")[0] for i in val} == {"val"}
    assert {ds.heldout.describe(int(i)).split("/")[0] for i in test} == {"test"}


def test_vit_cifar10_small_runs_on_a_cifar_like_folder(tmp_path):
    """The :small ViT (Ti/8 at 32 px) on a CIFAR-like JPEG tree (3 classes, 32 x 32) instead of its default
    digits, cut to 2 of its 12 blocks here: compiling the 12-block model for every stage takes a minute."""
    root, rng = tmp_path / "cifar", np.random.default_rng(2)
    for split, n in (("train", 16), ("test", 8)):
        for c, cls in enumerate(("airplane", "bird", "cat")):
            for i in range(n):
                _jpeg(root / split / cls / f"{i:04d}.jpg", 32, c, rng)
    workdir = tmp_path / "run"
    _run_small("vit_cifar10", workdir, data__source="folder", data__path=str(root), model__num_layers=2)
    assert json.loads((workdir / "config.json").read_text())["model"]["variant"] == "Ti/8"
