"""Batches on the device mesh: fixed-size batches padded with a mask, sharded along the `data` axis.

Every batch has the same shape (so a jitted step compiles once); the last ragged batch is padded by
repeating its first index with `mask=False`, so each example is seen exactly once and padded rows count
nowhere (losses, BatchNorm statistics, metrics all take the mask).
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Iterator
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from lotus_jax.data.sources import Source
from lotus_jax.errors import ConfigError

Batch = dict[str, Any]


def make_mesh(data_parallel: int = -1, devices: list | None = None) -> Mesh:
    """A 1-D mesh with axis `data` over `data_parallel` devices (-1 = all devices of all hosts)."""
    devices = jax.devices() if devices is None else devices
    n = len(devices) if data_parallel in (-1, None) else int(data_parallel)
    if not 1 <= n <= len(devices):
        raise ConfigError(f"mesh data axis {n} does not fit the {len(devices)} available devices")
    return Mesh(np.asarray(devices[:n]), ("data",))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension split over `data`, the rest replicated."""
    return NamedSharding(mesh, P("data"))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def check_batch_size(batch_size: int, mesh: Mesh) -> None:
    """Raises a one-line error when a batch cannot be split evenly over the data-parallel devices."""
    n = mesh.shape["data"]
    if batch_size <= 0 or batch_size % n:
        raise ConfigError(f"batch size {batch_size} is not a positive multiple of the {n} data-parallel devices; "
                         f"use a multiple of {n}")


def index_batches(indices: np.ndarray, batch_size: int, rng: np.random.Generator | None = None
                  ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yields (positions, mask) of fixed size into `indices`; shuffled when `rng` is given."""
    order = np.arange(len(indices)) if rng is None else rng.permutation(len(indices))
    for start in range(0, len(order), batch_size):
        pos = order[start:start + batch_size]
        mask = np.ones(batch_size, bool)
        if len(pos) < batch_size:
            mask[len(pos):] = False
            pos = np.concatenate([pos, np.full(batch_size - len(pos), pos[0], pos.dtype)])
        yield pos, mask


def batches(source: Source, indices: np.ndarray, batch_size: int, *, rng: np.random.Generator | None = None,
            extra: dict[str, np.ndarray] | None = None) -> Iterator[Batch]:
    """Host batches {'image' uint8, 'label' int32, 'mask' bool, **extra} over `indices` of `source`.

    `extra` holds per-position arrays aligned with `indices` (e.g. the LoTUS forget flag).
    """
    indices = np.asarray(indices)
    for pos, mask in index_batches(indices, batch_size, rng):
        idx = indices[pos]
        batch = {"image": source.get(idx), "label": source.labels[idx].astype(np.int32), "mask": mask}
        for k, v in (extra or {}).items():
            batch[k] = np.asarray(v)[pos]
        yield batch


def num_batches(n: int, batch_size: int) -> int:
    return -(-n // batch_size)


def to_device(batch: Batch, mesh: Mesh) -> Batch:
    """Places a host batch on the mesh, batch dimension sharded over `data`.

    On several hosts each process passes its own rows and they are assembled into one global array.
    """
    sharding = batch_sharding(mesh)
    if jax.process_count() == 1:
        return jax.device_put(batch, sharding)
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(sharding, x), batch)


def prefetch(it: Iterator[Batch], mesh: Mesh, size: int = 2) -> Iterator[Batch]:
    """Reads and places batches `size` ahead in a background thread, so decoding overlaps compute."""
    queue: collections.deque = collections.deque()
    cond = threading.Condition()
    done = object()

    def producer() -> None:
        try:
            for b in it:
                item = to_device(b, mesh)
                with cond:
                    cond.wait_for(lambda: len(queue) < size)
                    queue.append(item)
                    cond.notify_all()
            item = done
        except BaseException as e:  # handed to the consumer, re-raised there
            item = e
        with cond:
            queue.append(item)
            cond.notify_all()

    threading.Thread(target=producer, daemon=True).start()
    while True:
        with cond:
            cond.wait_for(lambda: len(queue) > 0)
            item = queue.popleft()
            cond.notify_all()
        if item is done:
            return
        if isinstance(item, BaseException):
            raise item
        yield item
