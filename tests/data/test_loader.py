"""EpochLoader: every example once with padding masked, extras and labels aligned, seeded shuffle that
ignores the thread count, resume at a batch without reading earlier ones, per-process rows, one vs several
devices, no thread left behind, and damaged images (folder JPEGs, cut-short .tar.gz, encoded records) as
one-line errors or masked, counted rows."""

import gc
import io
import tarfile
import threading
import time

import jax
import numpy as np
import pytest
from PIL import Image

from lotus_jax.data import pipeline
from lotus_jax.data.loader import EpochLoader, seed_to_int
from lotus_jax.data.sources import CorruptExample, DataError, LazySource, _decode_image, folder_dataset

IDX = np.array([3, 5, 7, 11, 13, 17, 19])


class _Recorder:
    """A source whose pixels are the example's index; records what `get_one` read, may be slow or fail."""

    def __init__(self, n: int = 23, fail_at: int | None = None, delay: float = 0.0):
        self.labels = (np.arange(n) % 3).astype(np.int32)
        self.class_names = ("a", "b", "c")
        self.image_shape = (4, 4, 1)
        self.fail_at, self.delay = fail_at, delay
        self.read: list[int] = []

    def __len__(self) -> int:
        return len(self.labels)

    def get(self, indices):
        raise AssertionError("the loader reads example by example, on grain's threads")

    def get_one(self, index: int) -> np.ndarray:
        time.sleep(self.delay)
        if index == self.fail_at:
            raise RuntimeError(f"decode of {index} failed")
        self.read.append(index)
        return np.full(self.image_shape, index, np.uint8)


def _host(batches) -> list[dict]:
    return [{k: np.asarray(v) for k, v in b.items()} for b in batches]


def _run(source, indices=IDX, batch_size=4, mesh=None, **kw) -> list[dict]:
    with EpochLoader(source, indices, batch_size, mesh or pipeline.make_mesh(1), **kw) as it:
        return _host(it)


def _order(batches) -> list[int]:
    return [int(x) for b in batches for x in b["image"][b["mask"], 0, 0, 0]]


@pytest.mark.parametrize("shuffle_seed", [None, 7])
def test_every_example_exactly_once_with_padding_masked(shuffle_seed):
    src = _Recorder()
    with EpochLoader(src, IDX, 4, pipeline.make_mesh(1), shuffle_seed=shuffle_seed,
                     extra={"flag": np.arange(7), "w": np.linspace(0, 1, 7, dtype=np.float32)}) as it:
        assert len(it) == 2
        batches = _host(it)
    assert len(batches) == 2
    for b in batches:
        assert b["image"].shape == (4, 4, 4, 1) and b["image"].dtype == np.uint8
        assert b["mask"].dtype == bool and b["label"].dtype == np.int32
        pix = b["image"][:, 0, 0, 0]
        np.testing.assert_array_equal(IDX[b["flag"]], pix)  # extras stay with their examples, padding too
        np.testing.assert_allclose(b["w"], np.linspace(0, 1, 7)[b["flag"]], rtol=1e-6)
        np.testing.assert_array_equal(b["label"], src.labels[pix])
    assert sorted(_order(batches)) == sorted(IDX)
    last = batches[-1]
    np.testing.assert_array_equal(last["mask"], [True, True, True, False])
    assert last["image"][3, 0, 0, 0] == last["image"][0, 0, 0, 0]  # padding repeats the batch's first example
    assert (_order(batches) == list(IDX)) == (shuffle_seed is None)


def test_exact_multiple_has_no_padding_and_empty_indices_have_no_batches():
    batches = _run(_Recorder(), np.arange(8), 4)
    assert len(batches) == 2 and all(b["mask"].all() for b in batches)
    assert _run(_Recorder(), np.zeros(0, np.int64), 4) == []


def test_shuffle_is_seeded_and_independent_of_threads():
    order = lambda seed, threads=2: _order(_run(_Recorder(), np.arange(23), 4, shuffle_seed=seed,  # noqa: E731
                                                num_threads=threads))
    a = order((3407, 1, 0))
    assert sorted(a) == list(range(23)) and a != list(range(23))
    assert a == order((3407, 1, 0)) == order((3407, 1, 0), threads=0) == order((3407, 1, 0), threads=5)
    assert a != order((3407, 1, 1)) and a != order((3407, 2, 0))
    assert order(5) != order(6)
    assert seed_to_int((3407, 1, 0)) == seed_to_int([3407, 1, 0]) == 1174785599  # fixed: resumed epochs rely on it
    assert 0 <= seed_to_int(-1) < 2**32


def test_start_batch_resumes_without_reading_earlier_batches():
    full = _run(_Recorder(), np.arange(23), 4, shuffle_seed=(1, 2))
    src = _Recorder()
    with EpochLoader(src, np.arange(23), 4, pipeline.make_mesh(1), shuffle_seed=(1, 2), start_batch=3) as it:
        assert it.position == 3 and len(it) == 6
        first = {k: np.asarray(v) for k, v in next(it).items()}
        assert it.position == 4
        skipped = {int(x) for b in full[:3] for x in b["image"][:, 0, 0, 0]}
        assert not skipped & set(src.read)  # batches 0..2 were never read
        tail = [first] + _host(it)
    assert len(tail) == 3
    for a, b in zip(tail, full[3:]):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])


def test_state_round_trip_continues_the_epoch():
    full = _run(_Recorder(), np.arange(23), 4, shuffle_seed=9)
    with EpochLoader(_Recorder(), np.arange(23), 4, pipeline.make_mesh(1), shuffle_seed=9) as it:
        head = _host([next(it), next(it)])
        state = it.get_state()
    assert state == {"position": 2}
    with EpochLoader(_Recorder(), np.arange(23), 4, pipeline.make_mesh(1), shuffle_seed=9) as it:
        it.set_state(state)
        tail = _host(it)
    assert _order(head + tail) == _order(full)
    with pytest.raises(ValueError, match="outside"):
        EpochLoader(_Recorder(), np.arange(23), 4, pipeline.make_mesh(1), start_batch=7)


def test_each_process_reads_only_its_rows(monkeypatch):
    full = _run(_Recorder(), np.arange(23), 8, shuffle_seed=4)
    src = _Recorder()
    monkeypatch.setattr(pipeline, "process_rows", lambda batch_size: slice(batch_size // 2, batch_size))
    mine = _run(src, np.arange(23), 8, shuffle_seed=4)  # as process 1 of 2
    assert len(mine) == len(full) == 3
    for a, b in zip(mine, full):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k][4:])
    assert sorted(src.read) == sorted(int(x) for b in mine for x in b["image"][:, 0, 0, 0])


def test_several_devices_give_the_values_of_one():
    one = _run(_Recorder(), np.arange(23), 8, shuffle_seed=1, extra={"f": np.arange(23)})
    with EpochLoader(_Recorder(), np.arange(23), 8, pipeline.make_mesh(4), shuffle_seed=1,
                     extra={"f": np.arange(23)}) as it:
        b = next(it)
        assert b["image"].sharding.spec == jax.sharding.PartitionSpec("data")
        assert len(b["image"].addressable_shards) == 4 and b["image"].addressable_shards[0].data.shape == (2, 4, 4, 1)
        four = _host([b]) + _host(it)
    assert len(one) == len(four) == 3
    for a, b in zip(one, four):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])


def _new_threads(before: set) -> list[str]:
    return [t.name for t in set(threading.enumerate()) - before if t.is_alive()]


@pytest.fixture
def baseline():
    jax.device_put(np.zeros(1)).block_until_ready()  # anything jax starts once, before counting
    return set(threading.enumerate())


def test_full_pass_leaves_no_thread(baseline):
    it = EpochLoader(_Recorder(delay=0.002), np.arange(23), 4, pipeline.make_mesh(1), num_threads=4, prefetch=2)
    next(it)
    running = _new_threads(baseline)
    assert any(n.startswith("grain-thread-prefetch") for n in running)  # the device prefetch thread
    assert sum(n.startswith("grain-prefetch") for n in running) >= 2  # grain's reading threads
    for _ in range(len(it) - 1):  # exactly the epoch's batches, never asking for the end (as zip does)
        next(it)
    assert it.position == 6
    assert _new_threads(baseline) == []  # exhausted: closed without being asked
    assert list(it) == []


def test_consumer_error_inside_with_leaves_no_thread(baseline):
    src = _Recorder(delay=0.005)
    with pytest.raises(KeyError):
        with EpochLoader(src, np.arange(23), 4, pipeline.make_mesh(1), num_threads=3, prefetch=3) as it:
            for i, _ in enumerate(it):
                if i == 1:
                    raise KeyError("consumer failed")
    assert it.position == 2
    assert _new_threads(baseline) == []
    n = len(src.read)
    time.sleep(0.05)
    assert len(src.read) == n  # nothing reads after close
    assert list(it) == []  # a closed loader yields nothing more


def test_decode_error_reaches_the_consumer_and_leaves_no_thread(baseline):
    it = EpochLoader(_Recorder(fail_at=9, delay=0.002), np.arange(23), 4, pipeline.make_mesh(1), num_threads=4)
    with pytest.raises(RuntimeError, match="decode of 9 failed"):
        list(it)
    assert it.position == 2  # batches 0 and 1 came through; batch 2 holds example 9
    assert _new_threads(baseline) == []


def test_close_mid_epoch_and_abandoned_loader_leave_no_thread(baseline):
    it = EpochLoader(_Recorder(delay=0.002), np.arange(23), 4, pipeline.make_mesh(1), num_threads=4, prefetch=2)
    next(it)
    it.close()
    it.close()
    assert _new_threads(baseline) == []
    abandoned = EpochLoader(_Recorder(delay=0.002), np.arange(23), 4, pipeline.make_mesh(1), num_threads=4)
    next(abandoned)
    assert _new_threads(baseline)
    del abandoned
    gc.collect()
    assert _new_threads(baseline) == []


def _jpeg(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def _jpeg_tree(root, rng) -> None:
    """train/{ant,bee}/000i.jpg (4 each) and test/{ant,bee}/000i.jpg (2 each), real 8x8 JPEGs."""
    for split, n in (("train", 4), ("test", 2)):
        for cls in ("ant", "bee"):
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                (root / split / cls / f"{i:04d}.jpg").write_bytes(_jpeg(rng.integers(0, 256, (8, 8, 3), np.uint8)))


@pytest.mark.parametrize("damage,reason", [("garbage", "not an image Pillow can read"), ("cut", "truncated")])
def test_damaged_jpeg_in_a_folder_is_one_line_naming_it(tmp_path, damage, reason):
    _jpeg_tree(tmp_path / "tree", np.random.default_rng(0))
    bad = tmp_path / "tree" / "train" / "bee" / "0001.jpg"
    data = bad.read_bytes()
    bad.write_bytes(b"\x00not a jpeg\xff" * 20 if damage == "garbage" else data[: len(data) // 2])
    ds = folder_dataset(str(tmp_path / "tree"))
    assert len(ds.train) == 8 and ds.train.describe(5) == "train/bee/0001.jpg"
    with pytest.raises(DataError) as e:
        _run(ds.train, np.arange(8), 4)
    msg = str(e.value)
    assert msg == (f"cannot decode train/bee/0001.jpg ({reason}): remove or replace it, "
                   f"or set --config.data.skip_corrupt=True")
    with pytest.raises(CorruptExample, match="train/bee/0001.jpg"):
        ds.train.get(np.array([0, 5]))
    ds.train.get(np.array([0, 4, 6]))  # the others read as before


def test_skip_corrupt_masks_and_counts_the_damaged_example(tmp_path):
    _jpeg_tree(tmp_path / "tree", np.random.default_rng(0))
    (tmp_path / "tree" / "train" / "bee" / "0001.jpg").write_bytes(b"garbage" * 30)
    ds = folder_dataset(str(tmp_path / "tree"))
    flag = np.arange(8)
    with EpochLoader(ds.train, np.arange(8), 4, pipeline.make_mesh(1), skip_corrupt=True, shuffle_seed=3,
                     extra={"flag": flag}) as it:
        batches = _host(it)
        assert it.corrupt == ["train/bee/0001.jpg (not an image Pillow can read)"]
    assert sum(int(b["mask"].sum()) for b in batches) == 7
    rows = [(f, m, img) for b in batches for f, m, img in zip(b["flag"], b["mask"], b["image"])]
    (masked,) = [(f, img) for f, m, img in rows if not m]
    assert masked[0] == 5 and not masked[1].any()  # the damaged example: zeros, mask False
    for f, m, img in rows:
        if m:
            np.testing.assert_array_equal(img, ds.train.images[f])


def test_cut_short_tar_gz_is_one_line(tmp_path):
    _jpeg_tree(tmp_path / "tree", np.random.default_rng(1))
    archive = tmp_path / "tree.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "tree", arcname="tree")
    full = folder_dataset(str(archive))
    assert full.train.describe(0) == "tree/train/ant/0000.jpg" and len(full.train) == 8
    data = archive.read_bytes()
    for keep in (0.5, 0.95):
        archive.write_bytes(data[: int(len(data) * keep)])
        with pytest.raises(DataError) as e:
            folder_dataset(str(archive))
        msg = str(e.value)
        assert "\n" not in msg and str(archive) in msg and "cut short or damaged" in msg
        assert "tree/" in msg  # names the member where reading stopped


def test_encoded_records_name_the_damaged_record():
    rng = np.random.default_rng(2)
    records = [_jpeg(rng.integers(0, 256, (8, 8, 3), np.uint8)) for _ in range(6)]
    records[2] = records[2][:40]
    src = LazySource(lambda idx: [records[i] for i in idx], lambda r: _decode_image(r, 3, None),
                     np.zeros(6, np.int32), ("a",), (8, 8, 3), decode_workers=4, name="validation")
    assert src.describe(2) == "validation record 2"
    with pytest.raises(DataError, match=r"^cannot decode validation record 2 \(truncated\)"):
        _run(src, np.arange(6), 2)
    with EpochLoader(src, np.arange(6), 2, pipeline.make_mesh(1), skip_corrupt=True) as it:
        batches = _host(it)
        assert it.corrupt == ["validation record 2 (truncated)"]
    np.testing.assert_array_equal([m for b in batches for m in b["mask"]], [1, 1, 0, 1, 1, 1])
