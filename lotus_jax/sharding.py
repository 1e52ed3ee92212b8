"""Device mesh and parameter placement: a 2-D ('data', 'fsdp') mesh, and the FSDP rule that splits large
parameter (and optimizer-state) arrays along `fsdp` while small ones stay replicated.

Batches are split over `data` and `fsdp` together (pipeline.batch_sharding), so every device computes on
its own rows; XLA gathers a split weight where a layer uses it and reduce-scatters its gradient. With
`fsdp=1` every parameter is replicated (plain data parallelism).

On several hosts `initialize_distributed` must run before anything touches a device; the mesh then spans
the devices of all processes, process by process, so each process owns a contiguous block of every
batch's rows.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from lotus_jax.errors import ConfigError

AXES = ("data", "fsdp")
# Arrays with fewer elements than this (64 KiB in float32) stay replicated: splitting them saves little
# memory and costs a gather each step.
MIN_SHARD_SIZE = 2 ** 14


def mesh_shape(data: int | None, fsdp: int | None, num_devices: int) -> tuple[int, int]:
    """(data, fsdp) sizes with at most one -1 (or None) resolved to the devices the other leaves.

    Raises ConfigError when the sizes do not divide `num_devices`.
    """
    sizes = [-1 if s is None else int(s) for s in (data, fsdp)]
    if sizes.count(-1) > 1 or any(s == 0 or s < -1 for s in sizes):
        raise ConfigError(f"mesh sizes data={data}, fsdp={fsdp} are invalid: use positive sizes and at most "
                          f"one -1 (all remaining devices)")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if num_devices % known:
            raise ConfigError(f"mesh data={data}, fsdp={fsdp}: {known} does not divide the {num_devices} "
                              f"devices")
        sizes[sizes.index(-1)] = num_devices // known
    return sizes[0], sizes[1]


def make_mesh(data: int | None = -1, fsdp: int | None = 1, devices: Sequence | None = None) -> Mesh:
    """A ('data', 'fsdp') mesh over the first data*fsdp of `devices` (default: all devices of all hosts).

    -1 on one axis takes all devices the other leaves. Devices keep `jax.devices()` order (process by
    process), so with several processes each owns a contiguous block of the flattened mesh.
    """
    devices = list(jax.devices() if devices is None else devices)
    if data not in (-1, None) and fsdp not in (-1, None):
        n, f = int(data), int(fsdp)
        if n < 1 or f < 1 or n * f > len(devices):
            raise ConfigError(f"mesh data={n} x fsdp={f} does not fit the {len(devices)} available devices")
    else:
        n, f = mesh_shape(data, fsdp, len(devices))
    return Mesh(np.asarray(devices[:n * f]).reshape(n, f), AXES)


def mesh_from_config(mesh_cfg: Any) -> Mesh:
    """The mesh of a config's `mesh` section {data, fsdp}. With one process, two explicit sizes may use fewer
    devices than there are (the first data*fsdp); with several, the mesh must span every device."""
    num = jax.device_count()
    data, fsdp = mesh_shape(mesh_cfg.get("data", -1), mesh_cfg.get("fsdp", 1), num)
    if data * fsdp > num or (data * fsdp < num and jax.process_count() > 1):
        need = "at most" if jax.process_count() == 1 else "exactly (one mesh spans all processes)"
        raise ConfigError(f"mesh data={data} x fsdp={fsdp} = {data * fsdp} devices, but there are {num}; "
                          f"set --config.mesh.data/--config.mesh.fsdp so the product is {need} {num} "
                          f"(-1 = the rest)")
    return make_mesh(data, fsdp)


def axis_size(mesh: Mesh, axis: str) -> int:
    """Size of `axis` in `mesh` (1 when the mesh lacks it, e.g. a 1-D data mesh)."""
    return int(dict(mesh.shape).get(axis, 1))


def batch_axes(mesh: Mesh) -> tuple[str, ...]:
    """Mesh axes the batch dimension is split over: `data`, plus `fsdp` when it has more than one device."""
    return ("data", "fsdp") if axis_size(mesh, "fsdp") > 1 else ("data",)


def partition_spec(shape: Sequence[int], fsdp: int, min_size: int | None = None) -> P:
    """The FSDP rule for one array: split its largest dimension divisible by `fsdp` along the `fsdp` axis
    (the last such dimension on ties) when it has at least `min_size` elements; otherwise replicate.

    The rule depends only on the shape, so optimizer moments get the same spec as their parameter.
    """
    min_size = MIN_SHARD_SIZE if min_size is None else min_size
    shape = tuple(int(d) for d in shape)
    if fsdp <= 1 or math.prod(shape) < min_size:
        return P()
    dims = [i for i, d in enumerate(shape) if d % fsdp == 0]
    if not dims:
        return P()
    axis = max(dims, key=lambda i: (shape[i], i))
    return P(*[("fsdp" if i == axis else None) for i in range(len(shape))])


def shardings(tree: Any, mesh: Mesh, min_size: int | None = None) -> Any:
    """NamedShardings by the FSDP rule for every leaf of `tree` (arrays, ShapeDtypeStructs or scalars)."""
    fsdp = axis_size(mesh, "fsdp")
    return jax.tree.map(lambda x: NamedSharding(mesh, partition_spec(np.shape(x), fsdp, min_size)), tree)


def shard_variables(tree: Any, mesh: Mesh, *, copy: bool = False, min_size: int | None = None) -> Any:
    """Places every leaf of `tree` on `mesh` by the FSDP rule; `copy` gives the result its own buffers
    (for state a jitted step donates) even where a leaf already lies where the rule puts it."""
    return jax.device_put(tree, shardings(tree, mesh, min_size), may_alias=False if copy else None)


def to_host(tree: Any) -> Any:
    """Numpy copy of a tree of (possibly multi-process, sharded) arrays, the same on every process."""
    if jax.process_count() == 1:
        return jax.device_get(tree)
    return multihost_utils.process_allgather(tree, tiled=True)


def initialize_distributed(enabled: bool) -> bool:
    """Starts JAX's multi-process runtime when `enabled` or JAX_COORDINATOR_ADDRESS is set; call it first.

    Without arguments JAX detects TPU pods, SLURM and Open MPI; JAX_COORDINATOR_ADDRESS (host:port),
    JAX_NUM_PROCESSES and JAX_PROCESS_ID set a cluster by hand. Returns whether it was started.
    """
    env = os.environ
    if not enabled and not env.get("JAX_COORDINATOR_ADDRESS"):
        return False
    kwargs = {}
    if env.get("JAX_NUM_PROCESSES"):
        kwargs["num_processes"] = int(env["JAX_NUM_PROCESSES"])
    if env.get("JAX_PROCESS_ID"):
        kwargs["process_id"] = int(env["JAX_PROCESS_ID"])
    jax.distributed.initialize(**kwargs)
    return True
