"""Orbax checkpoints of model variables, checked against the model they are restored into."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.sharding import Mesh

from lotus_jax import sharding
from lotus_jax.errors import ConfigError

Variables = dict[str, Any]


class CheckpointError(ConfigError):
    """A checkpoint that does not fit the configured model; the message names the first mismatch."""


def exists(path: epath.PathLike) -> bool:
    """True when `path` holds a complete orbax checkpoint (orbax renames into place when it commits)."""
    return (epath.Path(path) / "_CHECKPOINT_METADATA").exists()


def save(path: epath.PathLike, variables: Variables) -> None:
    """Saves variables (empty collections dropped) to `path`, atomically; replaces an older one."""
    tree = {k: v for k, v in variables.items() if jax.tree.leaves(v)}
    with ocp.Checkpointer(ocp.StandardCheckpointHandler()) as ckptr:  # synchronous: no writer threads linger
        ckptr.save(_absolute(path), args=ocp.args.StandardSave(tree), force=True)


def _absolute(path: epath.PathLike) -> epath.Path:
    """Orbax wants absolute paths; bucket paths (gs://...) already are."""
    path = epath.Path(path)
    return path if "://" in str(path) else epath.Path(path.absolute())


def _shapes(tree: Any) -> dict[str, tuple]:
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {jax.tree_util.keystr(p): tuple(getattr(x, "shape", np.shape(x))) for p, x in flat}


def restore(path: epath.PathLike, like: Variables, mesh: Mesh) -> Variables:
    """Restores the checkpoint at `path` into the structure of `like` (arrays or shape structs), each array
    read straight into its place on `mesh` by the FSDP rule (`sharding.partition_spec`).

    Raises CheckpointError naming the first missing, unexpected or differently shaped entry, e.g. a head
    trained for another number of classes.
    """
    path = _absolute(path)
    if not exists(path):
        raise CheckpointError(f"no checkpoint at {path}")
    ckptr = ocp.StandardCheckpointer()
    saved = ckptr.metadata(path).item_metadata.tree
    expected = {k: v for k, v in like.items() if jax.tree.leaves(v)}
    got, want = _shapes(saved), _shapes(expected)
    for key in sorted(set(got) | set(want)):
        if key not in got:
            raise CheckpointError(f"checkpoint {path} lacks {key} that the configured model has; "
                                  f"was it made for another architecture?")
        if key not in want:
            raise CheckpointError(f"checkpoint {path} has {key} that the configured model lacks; "
                                  f"was it made for another architecture?")
        if got[key] != want[key]:
            raise CheckpointError(f"checkpoint {path}: {key} has shape {got[key]} but the configured model "
                                  f"expects {want[key]} (another number of classes or model size?)")
    target = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), expected,
                          sharding.shardings(expected, mesh))
    restored = ckptr.restore(path, target)
    return {k: restored.get(k, v) for k, v in like.items()}
