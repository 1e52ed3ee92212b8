"""One epoch of device batches, read with grain.

`EpochLoader` turns `indices` of a `Source` into fixed-size batches {'image', 'label', 'mask', **extra} on
the mesh. The epoch is a `grain.MapDataset` over batch slots: a seeded permutation of the positions (when
shuffled), this process's rows of every global batch (`pipeline.process_rows`), the last batch padded with
masked rows. Encoded examples are read and decoded one by one on grain's thread pool and batched; images
already in memory (or all in a decoded cache, `data.cache`) are gathered a whole batch at a time. Batches are
put on the mesh a few ahead in one grain prefetch thread. Random access lets an epoch start at any batch
without reading the batches before it, and `close()` stops and joins every thread the loader started.
"""

from __future__ import annotations

import dataclasses
import threading
import weakref
from collections.abc import Iterator, Sequence
from typing import Any

import grain
import jax
import numpy as np
from jax.sharding import Mesh

from lotus_jax.data import pipeline
from lotus_jax.data.sources import CorruptExample, Source, available_cores, in_memory, read_one

Batch = pipeline.Batch


def seed_to_int(seed: Sequence[int] | int) -> int:
    """One shuffle seed in [0, 2**32) from an int or a tuple such as (run_seed, salt, epoch).

    numpy's `SeedSequence` hashes the numbers, so nearby tuples give unrelated seeds and the result is the
    same on every machine and in every run.
    """
    parts = [seed] if isinstance(seed, (int, np.integer)) else list(seed)
    if not parts:
        raise ValueError("shuffle_seed is an empty sequence")
    return int(np.random.SeedSequence([int(s) % 2**64 for s in parts]).generate_state(1, np.uint32)[0])


@dataclasses.dataclass(frozen=True)
class _ReadSlot:
    """Reads batch slot `k` of this process: which example fills it, its pixels, label, mask and extras.

    Local slot k is row `rows.start + k % local` of global batch `k // local`. A global slot past the end
    of the epoch is padding: it repeats the batch's first example with mask False. An example whose image
    is damaged raises `CorruptExample`, or with `skip_corrupt` becomes a zero image with mask False whose
    description travels with the element (empty string otherwise).

    Holds no reference to the loader, so an abandoned loader can be garbage-collected (and its threads
    stopped) while grain's threads still run this.
    """

    source: Source
    indices: np.ndarray
    labels: np.ndarray
    extra: dict[str, np.ndarray]
    order: np.ndarray | None
    batch_size: int
    rows: slice
    skip_corrupt: bool

    def __call__(self, slot: int) -> tuple[dict[str, Any], str]:
        local = self.rows.stop - self.rows.start
        b, j = divmod(int(slot), local)
        g = b * self.batch_size + self.rows.start + j
        valid = g < len(self.indices)
        k = g if valid else b * self.batch_size
        pos = int(self.order[k]) if self.order is not None else k
        corrupt = ""
        try:
            image = np.asarray(read_one(self.source, int(self.indices[pos])), np.uint8)
        except CorruptExample as e:
            if not self.skip_corrupt:
                raise
            image = np.zeros(self.source.image_shape, np.uint8)
            corrupt = e.description if valid else ""
            valid = False
        row = {"image": image, "label": self.labels[pos], "mask": np.bool_(valid)}
        row.update({name: values[pos] for name, values in self.extra.items()})
        return row, corrupt


@dataclasses.dataclass(frozen=True)
class _ReadBatch:
    """Reads this process's rows of global batch `b` in one gather, for sources held in memory (per-example
    reads on threads only add overhead there). A batch holding a damaged example is read row by row by
    `_ReadSlot`, so errors and skips are exactly those of the per-example path."""

    slot: _ReadSlot

    def __call__(self, b: int) -> tuple[Batch, list[str]]:
        s = self.slot
        local = s.rows.stop - s.rows.start
        g = int(b) * s.batch_size + s.rows.start + np.arange(local)
        valid = g < len(s.indices)
        k = np.where(valid, g, int(b) * s.batch_size)
        pos = s.order[k] if s.order is not None else k
        try:
            images = np.asarray(s.source.get(s.indices[pos]), np.uint8)
        except CorruptExample:
            return _stack([s(int(b) * local + j) for j in range(local)])
        batch = {"image": images, "label": s.labels[pos], "mask": valid}
        batch.update({name: values[pos] for name, values in s.extra.items()})
        return batch, []


def _stack(rows: Sequence[tuple[dict[str, Any], str]]) -> tuple[Batch, list[str]]:
    """A host batch from rows, and the descriptions of its skipped examples in row order."""
    batch = {key: np.stack([r[key] for r, _ in rows]) for key in rows[0][0]}
    return batch, [c for _, c in rows if c]


class _Placer:
    """Puts a host batch on the mesh (called in grain's prefetch thread): batch rows over data x fsdp, or
    with a `sharding`, by that (a population's member axis)."""

    def __init__(self, mesh: Mesh, sharding: Any = None):
        self.mesh, self.sharding = mesh, sharding

    def __call__(self, item: tuple[Batch, list[str]]) -> tuple[Batch, list[str]]:
        batch, corrupt = item
        if self.sharding is not None:
            return jax.device_put(batch, self.sharding), corrupt
        return pipeline.to_device(batch, self.mesh), corrupt


def _executors(it: Any) -> list:
    """The thread pools of a grain iterator chain. grain's `close()` shuts them down without waiting, so
    the loader joins them itself; found through grain's private attributes (`_parents`, `_executor`)."""
    found, todo = [], [it]
    while todo:
        node = todo.pop()
        if getattr(node, "_executor", None) is not None:
            found.append(node._executor)
        todo.extend(getattr(node, "_parents", ()))
    return found


class _Reader:
    """The live grain iterator of one loader and its shutdown; no reference back to the loader."""

    def __init__(self, dataset: grain.IterDataset):
        self.iterator = iter(dataset)
        self.executors = _executors(self.iterator)
        self._lock = threading.Lock()
        self._closed = False

    def close(self) -> None:
        """Stops grain's prefetch thread (joined, its buffered device batches dropped), cancels pending
        reads and waits for the reading threads to finish the example they are on. Idempotent.

        When the garbage collector runs this inside one of grain's threads (an abandoned loader caught in
        a reference cycle), that thread cannot wait for itself or for the threads waiting on it, so a
        short-lived thread does the closing.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if threading.current_thread().name.startswith("grain-"):
            threading.Thread(target=self._shut, name="lotus_jax-loader-close").start()
        else:
            self._shut()

    def _shut(self) -> None:
        self.iterator.close()
        for ex in self.executors:
            ex.shutdown(wait=True, cancel_futures=True)
        self.iterator, self.executors = None, []  # freed now, not by grain's __del__ at interpreter exit


class EpochLoader:
    """One pass over `indices` of `source` as device batches, in fixed-size padded batches.

    Iterating yields {'image' uint8 NHWC, 'label' int32, 'mask' bool, **extra} placed on `mesh` by
    `pipeline.to_device` (batch dimension sharded over data x fsdp). Every example appears exactly once
    with mask True; the last batch is filled with masked copies of its first example. `extra` holds arrays
    aligned with `indices` (e.g. a forget flag), batched alongside.

    `shuffle_seed` (an int or a tuple such as (run_seed, salt, epoch)) permutes the examples; the order
    depends only on the seed, never on the thread count. `start_batch=k` starts at batch k without reading
    batches 0..k-1. `position` is the index of the next batch to be yielded: save it (or `get_state()`)
    with a checkpoint and pass it back as `start_batch` (or `set_state`) to resume the epoch.

    `num_threads` threads read and decode examples (-1: all cores; 0: in the prefetch thread itself) with
    `num_threads` examples or one batch, whichever is more, read ahead; `prefetch` batches are put on the
    mesh ahead of use (0: when asked for). With several processes each reads only its rows of every batch.

    A damaged image raises `CorruptExample` (a one-line `DataError` naming the file or record); with
    `skip_corrupt` it becomes a masked zero row and its description is appended to `corrupt`.

    Use it as a context manager, or call `close()`: that stops every thread it started. It is also called
    when the epoch is exhausted, when reading fails, and when an abandoned loader is garbage-collected.
    """

    def __init__(self, source: Source, indices: np.ndarray, batch_size: int, mesh: Mesh, *,
                 shuffle_seed: Sequence[int] | int | None = None, extra: dict[str, np.ndarray] | None = None,
                 start_batch: int = 0, skip_corrupt: bool = False, num_threads: int = -1, prefetch: int = 2):
        pipeline.check_batch_size(batch_size, mesh)
        indices = np.asarray(indices)
        if indices.ndim != 1:
            raise ValueError(f"indices must be 1-D, got shape {indices.shape}")
        extra = {name: np.asarray(v) for name, v in (extra or {}).items()}
        for name, v in extra.items():
            if len(v) != len(indices):
                raise ValueError(f"extra {name!r} has {len(v)} entries for {len(indices)} indices")
        if num_threads < -1 or prefetch < 0:
            raise ValueError(f"num_threads={num_threads} (use >= 0 or -1) or prefetch={prefetch} (use >= 0)")
        self.mesh = mesh
        self.batch_size = batch_size
        self.num_threads = available_cores() if num_threads == -1 else num_threads
        self.prefetch = prefetch
        self.corrupt: list[str] = []
        self._num_batches = pipeline.num_batches(len(indices), batch_size)
        rows = pipeline.process_rows(batch_size)
        self._local = rows.stop - rows.start
        # A materialised permutation: O(n) memory for the index arrays of a run, and no per-example lookups.
        order = (np.random.default_rng(seed_to_int(shuffle_seed)).permutation(len(indices))
                 if shuffle_seed is not None and len(indices) else None)
        labels = np.asarray(source.labels)[indices].astype(np.int32) if len(indices) else np.zeros(0, np.int32)
        self._read = _ReadSlot(source, indices, labels, extra, order, batch_size, rows, skip_corrupt)
        self._read_batch = _ReadBatch(self._read)
        self._slots = grain.MapDataset.range(self._num_batches * self._local).map(self._read)
        self._batches = (grain.MapDataset.range(self._num_batches).map(self._read_batch)
                         if in_memory(source, indices) else None)
        self._placer = _Placer(mesh)
        self._reader: _Reader | None = None
        self._finalizer: weakref.finalize | None = None
        self._closed = False
        self.position = 0
        self.set_state({"position": start_batch})

    def __len__(self) -> int:
        """Batches in the whole epoch (including any before `start_batch`)."""
        return self._num_batches

    def get_state(self) -> dict[str, int]:
        """{'position': index of the next batch}: enough, with the same constructor arguments, to resume."""
        return {"position": self.position}

    def set_state(self, state: dict[str, int]) -> None:
        """Continues at batch `state['position']`: read-ahead batches are dropped, nothing before is read."""
        position = int(state["position"])
        if not 0 <= position <= self._num_batches:
            raise ValueError(f"batch position {position} is outside the epoch's 0..{self._num_batches} batches")
        self._stop_reader()
        self._closed = False
        self.position = position

    def _start_reader(self) -> _Reader:
        """grain: slots from `position` on -> read on `num_threads` -> batches -> mesh, `prefetch` ahead."""
        if self._batches is not None:  # in memory: whole batches gathered in the prefetch thread
            ds = self._batches[self.position:].to_iter_dataset(grain.ReadOptions(num_threads=0))
        else:
            slots = self._slots[self.position * self._local:]
            read_ahead = max(self.num_threads, self._local)
            ds = slots.to_iter_dataset(grain.ReadOptions(num_threads=self.num_threads,
                                                         prefetch_buffer_size=read_ahead))
            ds = ds.batch(self._local, batch_fn=_stack)
        ds = ds.map(self._placer)
        ds = grain.experimental.ThreadPrefetchIterDataset(ds, prefetch_buffer_size=self.prefetch)
        reader = _Reader(ds)
        self._finalizer = weakref.finalize(self, reader.close)
        return reader

    def _stop_reader(self) -> None:
        if self._finalizer is not None:
            self._finalizer()  # runs reader.close once and unregisters it
        self._reader, self._finalizer = None, None

    def __iter__(self) -> Iterator[Batch]:
        return self

    def __next__(self) -> Batch:
        if self._closed or self.position >= self._num_batches:
            self.close()
            raise StopIteration
        if self._reader is None:
            self._reader = self._start_reader()
        try:
            batch, corrupt = next(self._reader.iterator)
        except BaseException:
            self.close()
            raise
        self.position += 1
        self.corrupt.extend(corrupt)
        if self.position == self._num_batches:
            self.close()
        return batch

    def close(self) -> None:
        """Stops and joins every thread the loader started and drops prefetched batches. Idempotent; the
        loader then yields nothing more (`set_state` reopens it)."""
        self._closed = True
        self._stop_reader()

    def __enter__(self) -> EpochLoader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclasses.dataclass(frozen=True)
class _StackMembers:
    """Batch `b` of every member (each its own indices, order and extras), stacked on a leading member axis."""

    readers: tuple[_ReadBatch | _ReadSlot, ...]
    local: int

    def __call__(self, b: int) -> tuple[Batch, list[str]]:
        parts = []
        for read in self.readers:
            if isinstance(read, _ReadBatch):
                parts.append(read(b))
            else:
                parts.append(_stack([read(int(b) * self.local + j) for j in range(self.local)]))
        batch = {key: np.stack([p[0][key] for p in parts]) for key in parts[0][0]}
        return batch, [c for p in parts for c in p[1]]


class PopulationLoader(EpochLoader):
    """One epoch for a population of N models: member m reads `indices[m]` in the order `shuffle_seeds[m]` gives
    (the order an `EpochLoader` with that seed gives), with its own `extra[m]`; the batches of all members are
    stacked on a leading axis, {'image': (N, batch, H, W, C), 'label': (N, batch), 'mask': (N, batch), ...}, and
    placed by `sharding` (e.g. the member axis over a mesh axis). Every member must have as many indices.
    One process; reading, resuming and closing are as for `EpochLoader`.
    """

    def __init__(self, source: Source, indices: Sequence[np.ndarray], batch_size: int, mesh: Mesh, sharding: Any, *,
                 shuffle_seeds: Sequence[Sequence[int] | int] | None = None,
                 extra: Sequence[dict[str, np.ndarray]] | None = None, start_batch: int = 0,
                 skip_corrupt: bool = False, prefetch: int = 2):
        sizes = {len(i) for i in indices}
        if len(sizes) != 1:
            raise ValueError(f"every member needs as many indices, got sizes {sorted(sizes)}")
        members = len(indices)
        extra = list(extra) if extra is not None else [None] * members
        seeds = list(shuffle_seeds) if shuffle_seeds is not None else [None] * members
        loaders = [EpochLoader(source, idx, batch_size, mesh, shuffle_seed=s, extra=e, skip_corrupt=skip_corrupt,
                               num_threads=0, prefetch=0) for idx, s, e in zip(indices, seeds, extra)]
        super().__init__(source, indices[0], batch_size, mesh, skip_corrupt=skip_corrupt, num_threads=0,
                         prefetch=prefetch, start_batch=start_batch)
        readers = tuple(lo._read_batch if lo._batches is not None else lo._read for lo in loaders)
        self._batches = grain.MapDataset.range(self._num_batches).map(_StackMembers(readers, self._local))
        self._placer = _Placer(mesh, sharding)
