"""Batches on the device mesh: fixed-size batches padded with a mask, sharded along `data` (and `fsdp`).

Every batch has the same shape (so a jitted step compiles once); the last ragged batch is padded by
repeating its first index with `mask=False`, so each example is seen exactly once and padded rows count
nowhere (losses, BatchNorm statistics, metrics all take the mask).
"""

from __future__ import annotations

import collections
import math
import threading
from collections.abc import Iterator
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from lotus_jax import sharding
from lotus_jax.data.sources import Source
from lotus_jax.errors import ConfigError

Batch = dict[str, Any]


def make_mesh(data_parallel: int = -1, devices: list | None = None, fsdp: int = 1) -> Mesh:
    """A ('data', 'fsdp') mesh: `data_parallel` x `fsdp` devices (-1 = all devices of all hosts).

    `make_mesh(n)` is plain data parallelism over the first n devices (fsdp=1). See `sharding.make_mesh`.
    """
    return sharding.make_mesh(data_parallel, fsdp, devices)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension split over `data` (and `fsdp` when it has several devices), the rest
    replicated: every device of the mesh computes on its own rows."""
    axes = sharding.batch_axes(mesh)
    return NamedSharding(mesh, P(axes if len(axes) > 1 else axes[0]))


def replicated(mesh: Mesh) -> NamedSharding:
    """A full copy on every device of `mesh`."""
    return NamedSharding(mesh, P())


def batch_devices(mesh: Mesh) -> int:
    """How many ways a batch is split: data x fsdp."""
    return math.prod(sharding.axis_size(mesh, a) for a in sharding.batch_axes(mesh))


def check_batch_size(batch_size: int, mesh: Mesh) -> None:
    """Raises a one-line error when a batch cannot be split evenly over the devices of `data` x `fsdp`."""
    n = batch_devices(mesh)
    if batch_size <= 0 or batch_size % n:
        raise ConfigError(f"batch size {batch_size} is not a positive multiple of the {n} data-parallel devices; "
                         f"use a multiple of {n}")


def process_rows(batch_size: int) -> slice:
    """The rows of every global batch this process reads: its contiguous 1/P share of the P processes.

    The mesh lists devices process by process, so these are exactly the rows its devices hold; on one
    process, all rows.
    """
    p, n = jax.process_index(), jax.process_count()
    if batch_size % n:
        raise ConfigError(f"batch size {batch_size} is not a multiple of the {n} processes")
    k = batch_size // n
    return slice(p * k, (p + 1) * k)


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

    `extra` holds per-position arrays aligned with `indices` (e.g. the LoTUS forget flag). With several
    processes each reads and yields only its rows (`process_rows`) of the same global batches, which
    `to_device` assembles into global arrays; results match one process.
    """
    indices = np.asarray(indices)
    rows = process_rows(batch_size)
    for pos, mask in index_batches(indices, batch_size, rng):
        pos, mask = pos[rows], mask[rows]
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
    target = batch_sharding(mesh)
    if jax.process_count() == 1:
        return jax.device_put(batch, target)
    n = jax.process_count()
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(target, x, (x.shape[0] * n, *x.shape[1:])), batch)


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
