"""The decoded uint8 cache (`lotus_jax.data.cache`): cached examples equal the uncached decode exactly, other
indices fall through to the wrapped source, a loader over cached examples gathers whole batches, the disk cache
is reused without decoding and rebuilt when stale, and a damaged JPEG stays a one-line error naming the file
(or a masked row with skip_corrupt), also after the cache is reused from disk."""

import dataclasses
import io
import json
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lotus_jax.data import cache, pipeline
from lotus_jax.data.cache import CachedSource, cache_source, cache_training_examples
from lotus_jax.data.loader import EpochLoader
from lotus_jax.data.sources import (
    CorruptExample,
    DataError,
    Dataset,
    LazySource,
    ResizeCrop,
    SubsetSource,
    _decode_image,
    digits_dataset,
    in_memory,
)

SIZES = [(30, 22), (22, 34), (40, 26), (26, 28), (36, 20), (20, 40)]
RC = ResizeCrop("center", 18, 16)


@dataclasses.dataclass(frozen=True)
class _Files(LazySource):
    """A LazySource over JPEG files that names the file in errors, as the folder source does."""

    files: tuple[str, ...] = ()

    def describe(self, index: int) -> str:
        return self.files[index]


class _Counter:
    """Counts decodes (one per example read from the files)."""

    def __init__(self):
        self.n, self._lock = 0, threading.Lock()

    def __call__(self, path):
        with self._lock:
            self.n += 1
        return _decode_image(path, 3, RC)


def _jpeg_folder(root, n=12, seed=0) -> tuple[_Files, _Counter]:
    """`n` JPEGs of varied non-square sizes in `root` (labels i % 3), read through a decode counter."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(n):
        w, h = SIZES[i % len(SIZES)]
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (h, w, 3), np.uint8)).save(buf, format="JPEG", quality=90)
        (root / f"{i:03d}.jpg").write_bytes(buf.getvalue())
        files.append(str(root / f"{i:03d}.jpg"))
    count = _Counter()
    src = _Files(lambda idx: [files[i] for i in idx], count, (np.arange(n) % 3).astype(np.int32), ("a", "b", "c"),
                 (16, 16, 3), decode_workers=1, files=tuple(files))
    return src, count


def _host(loader) -> list[dict]:
    with loader as it:
        return [{k: np.asarray(v) for k, v in b.items()} for b in it]


def _assert_same_batches(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_cached_examples_equal_the_uncached_decode(tmp_path):
    src, count = _jpeg_folder(tmp_path / "jpg")
    cached = cache_source(src, np.array([9, 2, 5, 2, 7, 0]), workers=3)
    np.testing.assert_array_equal(cached.indices, [0, 2, 5, 7, 9])
    assert count.n == 5  # each example once, duplicates too
    order = np.array([7, 0, 9, 5, 2, 9])
    expected = np.stack([_decode_image(src.files[i], 3, RC) for i in order])
    count.n = 0
    np.testing.assert_array_equal(cached.get(order), expected)
    for j, i in enumerate(order):
        np.testing.assert_array_equal(cached.get_one(int(i)), expected[j])
    assert count.n == 0  # served from the cache
    np.testing.assert_array_equal(cached.labels, src.labels)
    assert len(cached) == len(src) and cached.image_shape == src.image_shape and cached.describe(5) == src.files[5]
    # A loader over cached examples gathers whole batches and yields what the uncached loader yields.
    mesh, idx = pipeline.make_mesh(1), cached.indices
    loader = EpochLoader(cached, idx, 2, mesh, shuffle_seed=4, extra={"flag": np.arange(5)}, num_threads=2)
    assert loader._batches is not None
    _assert_same_batches(_host(loader), _host(EpochLoader(src, idx, 2, mesh, shuffle_seed=4,
                                                          extra={"flag": np.arange(5)}, num_threads=2)))


def test_indices_outside_the_cache_fall_through(tmp_path):
    src, count = _jpeg_folder(tmp_path / "jpg")
    cached = cache_source(src, np.array([2, 5]))
    count.n = 0
    order = np.array([1, 2, 3, 5, 11])
    np.testing.assert_array_equal(cached.get(order), src.get(order))
    assert count.n == 3 + 5  # cached: 1, 3, 11; uncached: all five
    count.n = 0
    np.testing.assert_array_equal(cached.get_one(3), src.get_one(3))
    assert count.n == 2
    assert in_memory(cached, np.array([5, 2])) and not in_memory(cached, order) and not in_memory(cached)
    assert in_memory(SubsetSource(cached, np.array([2, 5])))
    assert not in_memory(SubsetSource(cached, np.array([2, 5, 6])))
    mesh = pipeline.make_mesh(1)
    loader = EpochLoader(cached, order, 2, mesh, num_threads=2)
    assert loader._batches is None  # examples that must be decoded: read one by one on threads
    _assert_same_batches(_host(loader), _host(EpochLoader(src, order, 2, mesh, num_threads=2)))
    empty = cache_source(src, np.array([], np.int64))
    np.testing.assert_array_equal(empty.get(order), src.get(order))
    # An in-memory base counts as covered, cached or not.
    digits = digits_dataset().train
    assert in_memory(cache_source(digits, np.array([3])), np.array([1, 3]))


def _files_in(directory) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_disk_cache_is_reused_and_rebuilt_when_stale(tmp_path):
    src, count = _jpeg_folder(tmp_path / "jpg")
    path = tmp_path / "work" / "cache" / "train.npy"
    idx = np.array([1, 4, 6, 10])
    fresh = cache_source(src, idx, workers=2, path=path, fingerprint="a")
    assert count.n == 4 and _files_in(path.parent) == ["train.npy", "train.npy.json"]  # no temporary left
    logged = []
    count.n = 0
    again = cache_source(src, idx, workers=2, path=path, fingerprint="a", log=logged.append)
    assert count.n == 0 and isinstance(again.images, np.memmap) and "reusing 4" in logged[0]
    np.testing.assert_array_equal(again.get(idx), fresh.get(idx))
    np.testing.assert_array_equal(again.get(idx), np.stack([_decode_image(src.files[i], 3, RC) for i in idx]))

    def rebuilt(indices, fingerprint="a") -> CachedSource:
        count.n = 0
        out = cache_source(src, indices, workers=2, path=path, fingerprint=fingerprint)
        assert count.n == len(indices)
        np.testing.assert_array_equal(out.get(indices), src.get(indices))
        assert _files_in(path.parent) == ["train.npy", "train.npy.json"]
        return out

    rebuilt(np.array([1, 4, 6, 11]))  # other examples, same count (same file shape)
    rebuilt(np.array([1, 4, 6, 11]), fingerprint="b")  # another decode setting
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # cut short
    rebuilt(np.array([1, 4, 6, 11]), fingerprint="b")
    path.unlink()  # the meta alone is not enough
    rebuilt(np.array([1, 4, 6, 11]), fingerprint="b")
    (path.parent / "train.npy.json").write_text("{not json")
    rebuilt(np.array([1, 4, 6, 11]), fingerprint="b")
    count.n = 0
    cache_source(src, np.array([1, 4, 6, 11]), path=path, fingerprint="b")
    assert count.n == 0


def test_damaged_jpeg_stays_a_one_line_error_naming_the_file(tmp_path):
    src, count = _jpeg_folder(tmp_path / "jpg")
    bad = src.files[4]
    data = Path(bad).read_bytes()
    Path(bad).write_bytes(data[: len(data) // 2])
    message = f"cannot decode {bad} (truncated): remove or replace it, or set --config.data.skip_corrupt=True"
    path = tmp_path / "cache" / "train.npy"
    idx = np.arange(8)
    for reuse in (False, True):  # as built, then as read back from disk (the damaged list is kept)
        count.n = 0
        cached = cache_source(src, idx, workers=2, path=path)
        assert count.n == (0 if reuse else 8) and cached.damaged == {4: "truncated"}
        with pytest.raises(CorruptExample) as e:
            cached.get_one(4)
        assert str(e.value) == message
        with pytest.raises(DataError, match=f"^cannot decode {bad} "):
            cached.get(np.array([2, 4, 11]))
        np.testing.assert_array_equal(cached.get(np.array([2, 5, 11])), src.get(np.array([2, 5, 11])))
        mesh = pipeline.make_mesh(1)
        with pytest.raises(DataError, match=f"^cannot decode {bad} "):
            _host(EpochLoader(cached, idx, 4, mesh))
        loader = EpochLoader(cached, idx, 4, mesh, skip_corrupt=True, extra={"i": idx})
        batches = _host(loader)
        assert loader.corrupt == [f"{bad} (truncated)"]
        masks = np.concatenate([b["mask"] for b in batches])
        np.testing.assert_array_equal(masks, idx != 4)
        for b in batches:
            for i, m, img in zip(b["i"], b["mask"], b["image"]):
                np.testing.assert_array_equal(img, src.get_one(int(i)) if m else np.zeros_like(img))


def test_an_image_of_another_size_stops_the_build(tmp_path):
    src, _ = _jpeg_folder(tmp_path / "jpg")
    uncropped = dataclasses.replace(src, decode=lambda p: _decode_image(p, 3, None))
    with pytest.raises(DataError, match="decodes to .* set --config.data.crop=center"):
        cache_source(uncropped, np.arange(3), workers=2, path=tmp_path / "cache" / "train.npy")
    assert not list((tmp_path / "cache").iterdir())  # nothing half-written is left


def test_cache_training_examples_wraps_encoded_sources_only(tmp_path, monkeypatch):
    src, count = _jpeg_folder(tmp_path / "jpg")
    digits = digits_dataset()
    assert cache_training_examples(digits, np.arange(5), directory=tmp_path / "c", workers=2) is digits
    ds = Dataset("jpg", src, digits.heldout, 3)
    out = cache_training_examples(ds, np.array([3, 1, 3, 8]), directory=tmp_path / "work" / "cache", workers=2)
    assert isinstance(out.train, CachedSource) and out.heldout is ds.heldout and out.num_classes == 3
    np.testing.assert_array_equal(out.train.indices, [1, 3, 8])
    meta = json.loads((tmp_path / "work" / "cache" / "train.npy.json").read_text())
    assert meta["shape"] == [3, 16, 16, 3]
    in_ram = cache_training_examples(ds, np.array([0, 2]), directory=None, workers=1)
    assert not isinstance(in_ram.train.images, np.memmap) and count.n == 5
    logged = []
    monkeypatch.setattr(cache, "_room", lambda directory: 1000)  # 3 x 768 bytes > 90% of 1000
    assert cache_training_examples(ds, np.array([4, 5, 6]), directory=tmp_path / "small", workers=1,
                                   log=logged.append) is ds
    assert "not caching the 3 unlearning examples" in logged[0]
