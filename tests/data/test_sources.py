"""Sources: digits (embedded), image folders (directory and .tar.gz), tfds array_record datasets (prepared
in the test without TensorFlow), the shared CIFAR-10 archive when present, and clear errors."""

import io
import tarfile
from pathlib import Path

import ml_collections as mlc
import numpy as np
import pytest
from PIL import Image

from lotus_jax import config
from lotus_jax.data.sources import (DataError, digits_dataset, folder_dataset, heldout_val_size, load_dataset,
                                    tfds_dataset)
from lotus_jax.errors import ConfigError

SHARED_CIFAR = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "cifar10-jpeg.tar.gz"


def test_digits_is_embedded_uint8_and_fixed():
    ds = digits_dataset()
    assert ds.num_classes == 10 and ds.train.image_shape == (8, 8, 1)
    assert len(ds.train) + len(ds.heldout) == 1797
    img = ds.train.get(np.array([0, 1]))
    assert img.dtype == np.uint8 and img.max() <= 255
    np.testing.assert_array_equal(ds.heldout.labels, digits_dataset().heldout.labels)


def _write_tree(root: Path, rng) -> dict:
    """split/class/*.png with known pixel values; returns {(split, class, i): array}."""
    truth = {}
    for split, n in (("train", 3), ("test", 2)):
        for cls in ("cat", "ant", "bee"):
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(n):
                arr = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
                Image.fromarray(arr).save(d / f"{i:04d}.png")
                truth[(split, cls, i)] = arr
    return truth


def test_folder_dataset_reads_png_tree_with_sorted_classes(tmp_path):
    truth = _write_tree(tmp_path / "data", np.random.default_rng(0))
    ds = folder_dataset(str(tmp_path / "data"))
    assert ds.train.class_names == ("ant", "bee", "cat") and ds.num_classes == 3
    assert len(ds.train) == 9 and len(ds.heldout) == 6
    np.testing.assert_array_equal(ds.train.labels, [0, 0, 0, 1, 1, 1, 2, 2, 2])
    np.testing.assert_array_equal(ds.train.get(np.array([6]))[0], truth[("train", "cat", 0)])  # PNG: lossless
    np.testing.assert_array_equal(ds.heldout.get(np.array([3]))[0], truth[("test", "bee", 1)])


def test_folder_dataset_reads_a_tar_gz_like_a_directory(tmp_path):
    _write_tree(tmp_path / "tree", np.random.default_rng(1))
    archive = tmp_path / "tree.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "tree", arcname="tree")
    a, b = folder_dataset(str(tmp_path / "tree")), folder_dataset(str(archive))
    np.testing.assert_array_equal(a.train.get(np.arange(9)), b.train.get(np.arange(9)))
    np.testing.assert_array_equal(a.heldout.labels, b.heldout.labels)


def test_folder_errors_say_what_to_do(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        folder_dataset(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images under train"):
        folder_dataset(str(tmp_path / "empty"))
    with pytest.raises(DataError, match="data.path"):
        load_dataset(mlc.ConfigDict(dict(source="folder", path=None)))
    with pytest.raises(DataError, match="unknown data.source"):
        load_dataset(mlc.ConfigDict(dict(source="s3")))


def test_mixed_image_shapes_name_a_file_of_each_and_the_setting_that_helps(tmp_path):
    # A grayscale image among RGB ones was reported as "different sizes" with a size setting that cannot help.
    _write_tree(tmp_path / "data", np.random.default_rng(2))
    Image.fromarray(np.zeros((6, 6), np.uint8)).save(tmp_path / "data" / "train" / "bee" / "0009.png")
    with pytest.raises(DataError, match=r"different numbers of channels: .*0009\.png.*data\.channels=3"):
        folder_dataset(str(tmp_path / "data"))
    assert folder_dataset(str(tmp_path / "data"), channels=3).train.get(np.arange(1))[0].shape == (6, 6, 3)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "data" / "train" / "bee" / "0009.png")
    with pytest.raises(DataError, match=r"different sizes: .*\(8, 8, 3\) \(.*0009\.png\).*data\.crop"):
        folder_dataset(str(tmp_path / "data"))


def _write_val_test_tree(root: Path) -> None:
    """train/val/test folders (PNG, 4x4) whose pixel value says split and position: val 1.., test 101.."""
    counts = {"train": {"ant": 3, "bee": 3}, "val": {"ant": 2, "bee": 3}, "test": {"ant": 4, "bee": 1}}
    for split, per_class in counts.items():
        value = {"train": 201, "val": 1, "test": 101}[split]
        for cls, n in per_class.items():
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(np.full((4, 4, 3), value, np.uint8)).save(root / split / cls / f"{i:03d}.png")
                value += 1


def test_test_split_reads_val_and_test_from_their_own_folders(tmp_path):
    _write_val_test_tree(tmp_path / "tree")
    archive = tmp_path / "tree.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "tree", arcname="tree")
    for path in (tmp_path / "tree", archive):
        ds = folder_dataset(str(path), heldout_split="val", test_split="test")
        assert len(ds.heldout) == 10 and heldout_val_size(ds.heldout.labels) == 5
        np.testing.assert_array_equal(ds.heldout.labels, [0, 0, 1, 1, 1, 0, 0, 0, 0, 1])
        pixels = ds.heldout.get(np.arange(10))[:, 0, 0, 0]
        np.testing.assert_array_equal(pixels, [1, 2, 3, 4, 5, 101, 102, 103, 104, 105])  # val folder, then test
        assert ds.heldout.describe(5).endswith("test/ant/000.png")
        assert heldout_val_size(ds.heldout.labels[:5]) is None  # derived arrays carry no boundary
    # Without test_split the held-out source is the one folder, as before.
    assert heldout_val_size(folder_dataset(str(tmp_path / "tree"), heldout_split="val").heldout.labels) is None


def test_heldout_per_class_subsets_val_and_test_separately(tmp_path):
    _write_val_test_tree(tmp_path / "tree")
    cfg = mlc.ConfigDict(dict(source="folder", path=str(tmp_path / "tree"), heldout_split="val", test_split="test",
                              heldout_per_class=2))
    ds = load_dataset(cfg)
    assert heldout_val_size(ds.heldout.labels) == 4  # 2 ant + 2 bee from val; then 2 ant + 1 bee from test
    np.testing.assert_array_equal(ds.heldout.get(np.arange(len(ds.heldout)))[:, 0, 0, 0], [1, 2, 3, 4, 101, 102, 105])


def test_test_split_errors_say_what_to_do(tmp_path):
    _write_val_test_tree(tmp_path / "tree")
    with pytest.raises(DataError, match="no images under exam/<class>/ .*data.test_split"):
        folder_dataset(str(tmp_path / "tree"), heldout_split="val", test_split="exam")
    with pytest.raises(DataError, match="read by data.source=folder only"):
        load_dataset(mlc.ConfigDict(dict(source="digits", test_split="test")))


@pytest.mark.parametrize("overrides,message", [
    ({"test_split": "test"}, ("data.test_split (a separate test folder) is read by data.source=folder only, got "
                              "data.source=digits; unset it")),
    ({"source": "folder", "path": "x", "test_split": "test"},
     ("data.test_split must name a folder other than data.train_split ('train') and data.heldout_split ('test'), "
      "got 'test'")),
    ({"source": "folder", "path": "x", "test_split": ""}, "data.test_split must be None or a non-empty string, got ''"),
    ({"source": "folder", "path": "x", "heldout_split": "val", "test_split": "test"}, None),
])
def test_test_split_config_rules(overrides, message):
    cfg = config.base_config()
    for key, value in overrides.items():
        cfg.data[key] = value
    try:
        config.validate(cfg)
    except ConfigError as e:
        assert str(e) == message
    else:
        assert message is None


def _prepare_tfds(data_dir: Path):
    """Builds a tiny image dataset in tfds array_record format, without TensorFlow (PNG bytes given)."""
    tfds = pytest.importorskip("tensorflow_datasets")

    class LotusJaxTinyImages(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(8, 8, 3), encoding_format="png"),
                "label": tfds.features.ClassLabel(names=["x", "y", "z"])}))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(30), "test": self._generate_examples(12)}

        def _generate_examples(self, n):
            rng = np.random.default_rng(n)
            for i in range(n):
                buf = io.BytesIO()
                Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(buf, format="PNG")
                buf.seek(0)
                yield i, {"image": buf, "label": i % 3}

    LotusJaxTinyImages(data_dir=str(data_dir), file_format="array_record").download_and_prepare()
    return "lotus_jax_tiny_images"


def test_tfds_array_record_dataset_reads_without_decoding_everything(tmp_path):
    name = _prepare_tfds(tmp_path)
    ds = tfds_dataset(name, data_dir=str(tmp_path))
    assert ds.num_classes == 3 and ds.train.class_names == ("x", "y", "z")
    assert len(ds.train) == 30 and len(ds.heldout) == 12
    np.testing.assert_array_equal(np.sort(ds.train.labels), np.sort(np.arange(30) % 3))
    rng = np.random.default_rng(12)
    first = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    imgs = ds.heldout.get(np.arange(12))  # tfds orders records by key hash: find example 0 by its pixels
    assert imgs.dtype == np.uint8 and imgs.shape == (12, 8, 8, 3)
    assert any(np.array_equal(im, first) for im in imgs)


def test_tfds_missing_dataset_is_one_line_without_download(tmp_path):
    with pytest.raises(DataError, match="is not prepared") as e:
        tfds_dataset("imagenet2012", data_dir=str(tmp_path))
    assert "manual_dir" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(DataError, match="unknown tfds dataset"):
        tfds_dataset("no_such_dataset_xyz", data_dir=str(tmp_path))


@pytest.mark.skipif(not SHARED_CIFAR.exists(), reason="../shared/data/cifar10-jpeg.tar.gz is not present")
def test_shared_cifar10_archive():
    ds = folder_dataset(str(SHARED_CIFAR))
    assert ds.train.class_names[:3] == ("airplane", "automobile", "bird")
    assert len(ds.train) == 50_000 and len(ds.heldout) == 10_000
    np.testing.assert_array_equal(np.bincount(ds.train.labels), [5000] * 10)
    assert ds.train.image_shape == (32, 32, 3)
