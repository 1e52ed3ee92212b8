"""A decoded uint8 cache of the training examples the unlearning stage reads again and again.

Encoded sources (tfds array_record: ImageNet) decode every example each time it is read. The unlearning stage
reads only the forget and retain examples (ImageNet protocol: 5k + 45k of 1.28M; LoTUS uses 5k + 13.5k of
them), every epoch and in every `acc_f` pass and evaluation, so `cache_source` decodes them once, in parallel,
into one uint8 array, kept in a `.npy` file in the workdir (memory-mapped) so that a resumed run and every
method reuse it. `CachedSource` serves the cached examples as array lookups and passes any other index to the
source it wraps; a loader whose examples are all cached gathers whole batches (`sources.in_memory`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from lotus_jax import files
from lotus_jax.data.sources import (CorruptExample, DataError, Dataset, Source, WrapsSource, describe, in_memory,
                                    read_one)

Log = Callable[[str], None]
LOG_EVERY_S = 30.0
FREE_SPACE_SHARE = 0.9  # a cache may take at most this share of the free disk (or available memory)


@dataclasses.dataclass(frozen=True, eq=False)
class CachedSource(WrapsSource):
    """`base` with the examples `indices` (sorted, unique) decoded in `images` (uint8, one row per index; in
    memory or a read-only memmap). `damaged` maps a cached index whose image could not be decoded to the
    reason: its row is zeros and reading it raises `CorruptExample` naming it, as the base source would.
    Any other index is read from `base`. Labels, class names, shape and `describe` are the base's."""

    base: Source
    indices: np.ndarray
    images: np.ndarray
    damaged: Mapping[int, str] = dataclasses.field(default_factory=dict)

    @property
    def labels(self) -> np.ndarray:
        return self.base.labels

    def __len__(self) -> int:
        return len(self.base)

    def _rows(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(row of each index in `images`, whether it is cached)."""
        if not len(self.indices):
            return np.zeros(len(indices), np.int64), np.zeros(len(indices), bool)
        rows = np.minimum(np.searchsorted(self.indices, indices), len(self.indices) - 1)
        return rows, self.indices[rows] == indices

    def covers(self, indices: np.ndarray) -> bool:
        """Whether every example of `indices` is read from memory (the cache, or an in-memory base)."""
        indices = np.asarray(indices)
        _, hit = self._rows(indices)
        return bool(hit.all()) or in_memory(self.base, indices[~hit])

    def _check(self, index: int) -> None:
        if index in self.damaged:
            raise CorruptExample(self.describe(index), self.damaged[index])

    def get(self, indices: np.ndarray) -> np.ndarray:
        indices = np.asarray(indices)
        rows, hit = self._rows(indices)
        if self.damaged:
            cached = indices[hit]
            bad = cached[np.isin(cached, np.fromiter(self.damaged, np.int64, len(self.damaged)))]
            if len(bad):
                self._check(int(bad[0]))
        if hit.all():
            return np.asarray(self.images[rows])
        out = np.empty((len(indices), *self.image_shape), np.uint8)
        out[hit] = self.images[rows[hit]]
        out[~hit] = self.base.get(indices[~hit])
        return out

    def get_one(self, index: int) -> np.ndarray:
        rows, hit = self._rows(np.array([index]))
        if not hit[0]:
            return read_one(self.base, index)
        self._check(int(index))
        return np.asarray(self.images[rows[0]])

    def describe(self, index: int) -> str:
        return describe(self.base, index)


def cache_key(source: Source, indices: np.ndarray, fingerprint: str = "") -> str:
    """What a cache file holds: the indices, the source's size and image shape, and `fingerprint` (how the
    source decodes, e.g. the data config)."""
    h = hashlib.sha1(np.asarray(indices, np.int64).tobytes())
    h.update(json.dumps([len(source), list(source.image_shape), fingerprint]).encode())
    return h.hexdigest()


def cache_source(source: Source, indices: np.ndarray, *, workers: int = 1, path: str | os.PathLike | None = None,
                 fingerprint: str = "", log: Log | None = None, log_every_s: float = LOG_EVERY_S) -> CachedSource:
    """`source` with the examples `indices` decoded once, on `workers` threads, into a `CachedSource`.

    With `path` (a local `.npy` file) the images are written there (a temporary file renamed into place, then
    `<path>.json` with the key and the damaged examples), and a later call whose key (`cache_key`: indices,
    source size and shape, `fingerprint`) matches and whose file has the expected shape maps that file instead
    of decoding again; anything else (another split, a cut-short or missing file) is decoded again and replaces
    it. An example that cannot be decoded is kept as a zero row that raises `CorruptExample` when read; an
    image of the wrong size stops the build with a `DataError`. `log` gets progress lines every `log_every_s`.
    """
    indices = np.unique(np.asarray(indices, np.int64))
    shape = (len(indices), *source.image_shape)
    say = log or (lambda msg: None)
    path = Path(path) if path is not None and len(indices) else None
    if path is None:
        images = np.empty(shape, np.uint8)
        return CachedSource(source, indices, images, _decode_into(images, source, indices, workers, say, log_every_s))
    key = cache_key(source, indices, fingerprint)
    meta = Path(f"{path}.json")
    found = _load(path, meta, key, shape)
    if found is not None:
        say(f"[cache] reusing {len(indices):,} decoded examples in {path}")
        return CachedSource(source, indices, *found)
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(OSError):
        meta.unlink()  # meta present => its images file is complete
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
        say(f"[cache] decoding {len(indices):,} examples ({out.nbytes / 2**30:.2f} GiB) into {path} on "
            f"{workers} thread(s)")
        damaged = _decode_into(out, source, indices, workers, say, log_every_s)
        out.flush()
        del out
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
    files.write_bytes_here(meta, json.dumps({"key": key, "shape": list(shape),
                                             "damaged": {str(i): why for i, why in damaged.items()}}).encode())
    return CachedSource(source, indices, np.load(path, mmap_mode="r"), damaged)


def _load(path: Path, meta: Path, key: str, shape: tuple[int, ...]) -> tuple[np.ndarray, dict[int, str]] | None:
    """(images memmap, damaged) of a cache file made for `key` with `shape`, or None if there is none."""
    try:
        info = json.loads(meta.read_text())
        if info.get("key") != key or tuple(info.get("shape", ())) != shape:
            return None
        images = np.load(path, mmap_mode="r")
        if images.shape != shape or images.dtype != np.uint8:
            return None
        return images, {int(i): str(why) for i, why in info.get("damaged", {}).items()}
    except (OSError, ValueError, AttributeError, TypeError):  # missing, cut short, not JSON / .npy
        return None


def _decode_into(out: np.ndarray, source: Source, indices: np.ndarray, workers: int, log: Log,
                 log_every_s: float) -> dict[int, str]:
    """Decodes example `indices[j]` of `source` into `out[j]` for every j, on `workers` threads (each reads
    one example at a time, as the epoch loader does); returns {index: reason} of the damaged ones."""
    shape = tuple(out.shape[1:])

    def put(j: int) -> tuple[int, str] | None:
        index = int(indices[j])
        try:
            img = read_one(source, index)
        except CorruptExample as e:
            return index, e.reason
        if img.shape != shape:
            raise DataError(f"{describe(source, index)} decodes to {img.shape}, not {shape}; set "
                            f"--config.data.crop=center|resize so that every image gets one size")
        out[j] = img
        return None

    damaged: dict[int, str] = {}
    start = last = time.perf_counter()
    pool = ThreadPoolExecutor(workers, thread_name_prefix="lotus_jax-cache") if workers > 1 else None
    try:
        results = pool.map(put, range(len(indices))) if pool is not None else map(put, range(len(indices)))
        for done, bad in enumerate(results, 1):
            if bad is not None:
                damaged[bad[0]] = bad[1]
            now = time.perf_counter()
            if now - last >= log_every_s and done < len(indices):
                last = now
                log(f"[cache] {done:,}/{len(indices):,} decoded ({done / (now - start):.0f} img/s)")
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    if len(indices):
        sec = time.perf_counter() - start
        log(f"[cache] {len(indices):,} decoded in {sec:.1f}s ({len(indices) / max(sec, 1e-9):.0f} img/s)"
            + (f", {len(damaged)} damaged" if damaged else ""))
    return damaged


def _room(directory: Path | None) -> int | None:
    """Bytes a new cache may use: the free disk under `directory`, or (None) the available memory."""
    try:
        if directory is not None:
            return shutil.disk_usage(directory).free
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        return None


def cache_training_examples(dataset: Dataset, indices: np.ndarray, *, directory: str | os.PathLike | None,
                            workers: int, fingerprint: str = "", log: Log | None = None) -> Dataset:
    """`dataset` with the training examples `indices` decoded once (`cache_source`) into
    `directory/train.npy` (None: in memory), for a stage that reads them repeatedly. Unchanged when the
    training source is already in memory, or when the cache would take more than 90% of the free disk (or
    available memory): that is logged and the examples are decoded when read, as without the cache."""
    if in_memory(dataset.train):
        return dataset
    say = log or (lambda msg: None)
    indices = np.unique(np.asarray(indices, np.int64))
    path = None if directory is None else Path(directory) / "train.npy"
    need = len(indices) * int(np.prod(dataset.train.image_shape))
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    room = _room(None if path is None else path.parent)
    if room is not None and path is not None and path.exists():
        room += path.stat().st_size  # replaced when stale
    if room is not None and need > FREE_SPACE_SHARE * room:
        say(f"[cache] not caching the {len(indices):,} unlearning examples: they need {need / 2**30:.1f} GiB, "
            f"{room / 2**30:.1f} GiB free in {path.parent if path else 'memory'}; they are decoded when read")
        return dataset
    train = cache_source(dataset.train, indices, workers=workers, path=path, fingerprint=fingerprint, log=log)
    return dataclasses.replace(dataset, train=train)
