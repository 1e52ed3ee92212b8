"""ImageNet input: host-side resize/centre crop against hand-computed references, parallel decode equal to
serial decode, and `main.run` end to end on a tiny imagenet-like tfds dataset (JPEGs of varied non-square
sizes, train + validation splits) prepared in the test without TensorFlow."""

import io
import json
import shutil

import ml_collections as mlc
import numpy as np
import pytest
from PIL import Image

from configs.imagenet import get_config
from lotus_jax import main
from lotus_jax.data.sources import (DataError, LazySource, ResizeCrop, _decode_image, load_dataset,
                                    resize_crop_from_config)


def _gradient(w: int, h: int) -> np.ndarray:
    """R rises left to right 0..255, G top to bottom 0..255: a pixel's values say where it came from."""
    x = np.broadcast_to(np.arange(w)[None, :], (h, w))
    y = np.broadcast_to(np.arange(h)[:, None], (h, w))
    return np.stack([np.round(x * 255 / (w - 1)), np.round(y * 255 / (h - 1)), np.full((h, w), 128)],
                    -1).astype(np.uint8)


@pytest.mark.parametrize("w,h,resized,offset", [
    (300, 200, (384, 256), (80, 16)),  # landscape: shorter side 200 -> 256, long 300 * 256 / 200 = 384
    (200, 300, (256, 384), (16, 80)),  # portrait
    (301, 200, (385, 256), (80, 16)),  # 256 * 301 / 200 = 385.28 -> 385; (385 - 224) / 2 = 80.5 rounds to 80
])
def test_center_crop_is_torchvision_resize256_centercrop224(w, h, resized, offset):
    img = _gradient(w, h)
    out = np.asarray(ResizeCrop("center", 256, 224)(Image.fromarray(img)))
    assert out.shape == (224, 224, 3)
    left, top = offset
    ref = np.asarray(Image.fromarray(img).resize(resized, Image.BILINEAR))[top:top + 224, left:left + 224]
    np.testing.assert_array_equal(out, ref)
    # Bilinear keeps a linear ramp: output column j samples source x = (left + j + 0.5) * w / W - 0.5.
    j = np.arange(224)
    src_x = (left + j + 0.5) * w / resized[0] - 0.5
    src_y = (top + j + 0.5) * h / resized[1] - 0.5
    np.testing.assert_allclose(out[112, :, 0], src_x * 255 / (w - 1), atol=1.01)
    np.testing.assert_allclose(out[:, 112, 1], src_y * 255 / (h - 1), atol=1.01)
    if (resized[0] - 224) % 2 == 0 and (resized[1] - 224) % 2 == 0:  # exactly centred: mirrored edges
        assert abs(int(out[112, 0, 0]) + int(out[112, -1, 0]) - 255) <= 1
        assert abs(int(out[0, 112, 1]) + int(out[-1, 112, 1]) - 255) <= 1


def test_resize_policy_and_config_errors():
    img = Image.fromarray(_gradient(30, 20))
    out = np.asarray(ResizeCrop("resize", crop_size=8, interpolation="bicubic")(img))
    np.testing.assert_array_equal(out, np.asarray(img.resize((8, 8), Image.BICUBIC)))
    assert ResizeCrop()(img) is img
    base = dict(crop="none", image_size=None, resize_size=None, crop_size=None, interpolation="bilinear")
    assert resize_crop_from_config(mlc.ConfigDict(base)) is None
    assert resize_crop_from_config(mlc.ConfigDict(dict(base, image_size=16))) == ResizeCrop("resize", crop_size=16)
    for bad, msg in [(dict(crop="centre"), "unknown data.crop"), (dict(crop="resize"), "crop_size"),
                     (dict(crop="center", crop_size=224, resize_size=200), "resize_size >= data.crop_size"),
                     (dict(crop="resize", crop_size=8, interpolation="lanczos"), "unknown data.interpolation"),
                     (dict(crop="resize", crop_size=8, image_size=8), "both resize")]:
        with pytest.raises(DataError, match=msg):
            resize_crop_from_config(mlc.ConfigDict(dict(base, **bad)))


def _jpeg(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def test_parallel_decode_equals_serial_decode_in_order():
    rng = np.random.default_rng(0)
    records = [_jpeg(rng.integers(0, 256, (int(rng.integers(20, 60)), int(rng.integers(20, 60)), 3), np.uint8))
               for _ in range(24)]
    rc = ResizeCrop("center", 18, 16)
    decode = lambda r: _decode_image(r, 3, rc)  # noqa: E731
    fetch = lambda idx: [records[i] for i in idx]  # noqa: E731
    labels = np.zeros(24, np.int32)
    serial = LazySource(fetch, decode, labels, ("a",), (16, 16, 3), decode_workers=1)
    parallel = LazySource(fetch, decode, labels, ("a",), (16, 16, 3), decode_workers=4)
    order = rng.permutation(24)
    a, b = serial.get(order), parallel.get(order)
    assert a.dtype == np.uint8 and a.shape == (24, 16, 16, 3)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(b[5], decode(records[order[5]]))
    uncropped = LazySource(fetch, lambda r: _decode_image(r, 3, None), labels, ("a",), (16, 16, 3), 4)
    with pytest.raises(DataError, match="data.crop=center"):
        uncropped.get(order)


SIZES = [(48, 36), (36, 52), (60, 40), (40, 44), (56, 34), (34, 64)]


def _prepare_imagenet_like(data_dir) -> str:
    """A 4-class imagenet-like dataset (JPEG, varied non-square sizes, train 20 / validation 12) in tfds
    array_record format, built without TensorFlow (JPEG bytes are given, so tfds does not encode)."""
    tfds = pytest.importorskip("tensorflow_datasets")

    class LotusJaxTinyImagenet(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("5.1.0")

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
                "label": tfds.features.ClassLabel(names=["n01", "n02", "n03", "n04"]),
                "file_name": tfds.features.Text()}))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(20, 0), "validation": self._generate_examples(12, 1)}

        def _generate_examples(self, n, seed):
            rng = np.random.default_rng(seed)
            for i in range(n):
                label = i % 4
                w, h = SIZES[i % len(SIZES)]
                img = np.clip(rng.normal(60 * label + 30, 20, (h, w, 3)), 0, 255).astype(np.uint8)
                yield f"{seed}_{i}", {"image": io.BytesIO(_jpeg(img)), "label": label, "file_name": f"{i}.JPEG"}

    LotusJaxTinyImagenet(data_dir=str(data_dir), file_format="array_record").download_and_prepare()
    return "lotus_jax_tiny_imagenet"


@pytest.fixture(scope="module")
def imagenet_dir(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("tfds")
    return _prepare_imagenet_like(data_dir), data_dir


def _small_config(name: str, data_dir) -> mlc.ConfigDict:
    c = get_config("small")
    c.data.name, c.data.data_dir = name, str(data_dir)
    c.mesh.data = 1  # one of the test session's 8 fake devices
    c.data.forget.per_class, c.data.forget.retain_per_class = 1, 3
    c.data.decode_workers = 2
    c.model.num_layers, c.model.hidden_size, c.model.num_heads, c.model.mlp_dim = 1, 16, 2, 32
    c.methods = "lotus"
    c.lotus.epochs = 1
    c.train.batch_size = c.lotus.batch_size = c.eval.batch_size = 8
    return c


def test_imagenet_config_reads_tfds_with_center_crop(imagenet_dir):
    name, data_dir = imagenet_dir
    ds = load_dataset(_small_config(name, data_dir).data)
    assert ds.num_classes == 4 and ds.train.class_names == ("n01", "n02", "n03", "n04")
    assert len(ds.train) == 20 and len(ds.heldout) == 12 and ds.train.image_shape == (32, 32, 3)
    np.testing.assert_array_equal(np.bincount(ds.train.labels), [5] * 4)
    imgs = ds.train.get(np.arange(20))
    assert imgs.shape == (20, 32, 32, 3) and imgs.dtype == np.uint8
    means = np.array([imgs[ds.train.labels == c].mean() for c in range(4)])  # classes differ in brightness
    assert np.all(np.diff(means) > 30)
    assert list((data_dir / name / "5.1.0" / "lotus_jax_labels").glob("*.npy"))  # label scan is cached
    np.testing.assert_array_equal(load_dataset(_small_config(name, data_dir).data).train.labels, ds.train.labels)


def test_main_runs_imagenet_small_end_to_end(imagenet_dir, tmp_path):
    name, data_dir = imagenet_dir
    metrics = main.run(_small_config(name, data_dir), tmp_path / "run")
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    cached = json.loads((tmp_path / "run" / "cache" / "train.npy.json").read_text())
    assert cached["shape"] == [16, 32, 32, 3]  # D_f and D_r (4 classes x (1 + 3)) decoded once, for every stage
    assert saved == json.loads(json.dumps(metrics))
    assert {"original", "lotus"} <= set(saved["models"])
    lotus = saved["models"]["lotus"]
    for key in ("acc_forget", "acc_retain", "acc_test", "mia", "rf_jsd"):
        assert 0.0 <= lotus[key] <= 1.0, key
    # LoTUS again without the cache (data.cache_unlearning=False): the same model, the same numbers.
    run = tmp_path / "run"
    shutil.rmtree(run / "cache")
    shutil.rmtree(run / "checkpoints" / "lotus")
    (run / "results" / "lotus.json").unlink()
    c = _small_config(name, data_dir)
    c.stages, c.data.cache_unlearning = "unlearn,evaluate", False
    again = main.run(c, run)["models"]["lotus"]
    assert not (run / "cache").exists()
    assert {k: v for k, v in again.items() if "time" not in k} == {k: v for k, v in lotus.items() if "time" not in k}
