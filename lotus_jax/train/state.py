"""The train state (parameters, BatchNorm statistics, optimizer state) on the device mesh, and the forward
pass that keeps BatchNorm statistics to the valid rows of a padded batch."""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax.training import train_state
from jax.sharding import Mesh

from lotus_jax import sharding

Variables = dict[str, Any]


class TrainState(train_state.TrainState):
    """Flax train state plus BatchNorm statistics (an empty dict for models without BatchNorm)."""

    batch_stats: Any = None


def variables_of(state: TrainState) -> Variables:
    """The model variables {'params', 'batch_stats'?} of a train state."""
    v = {"params": state.params}
    if state.batch_stats:
        v["batch_stats"] = state.batch_stats
    return v


@jax.jit
def all_finite(tree: Any) -> jax.Array:
    """True when no leaf of `tree` holds a NaN or an infinity: one program per tree structure, on device
    (sharded leaves are never gathered to a host)."""
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)] or [jnp.bool_(True)]))


@functools.partial(jax.jit, static_argnames="dtype")
def zeros_like_tree(tree: Any, dtype: Any = None) -> Any:
    """Zeros shaped like every leaf of `tree` (in `dtype`, else each leaf's): one program for the whole tree,
    where a `tree.map` of eager `zeros_like` compiles one per leaf shape."""
    return jax.tree.map(lambda x: jnp.zeros(x.shape, dtype or x.dtype), tree)


@jax.jit
def divide_tree(tree: Any, n: jax.Array) -> Any:
    """Every leaf of `tree` divided by the scalar `n` (one program)."""
    return jax.tree.map(lambda x: x / n, tree)


def place(tree: Any, mesh: Mesh) -> Any:
    """Places every leaf of `tree` on `mesh` by the FSDP rule (`sharding.partition_spec`): large arrays split
    along `fsdp`, the rest replicated (everything replicated when fsdp=1). Leaves already placed so are kept."""
    return sharding.shard_variables(tree, mesh)


def create_state(model: nn.Module, variables: Variables, tx: optax.GradientTransformation, mesh: Mesh) -> TrainState:
    """A train state (optimizer initialised) for `variables`, placed on `mesh` by the FSDP rule.

    The optimizer state is created in place by a jitted `tx.init` whose outputs follow the same rule, so each
    moment has its parameter's sharding and no full copy lands on one device. The state owns its buffers
    (steps donate it; the caller keeps its arrays).
    """
    variables = sharding.shard_variables(variables, mesh, copy=True)
    params = variables["params"]
    opt_state = jax.jit(tx.init, out_shardings=sharding.shardings(jax.eval_shape(tx.init, params), mesh))(params)
    step = sharding.shard_variables(jnp.zeros((), jnp.int32), mesh)
    return TrainState(step=step, apply_fn=model.apply, params=params, tx=tx, opt_state=opt_state,
                      batch_stats=variables.get("batch_stats", {}))


def forward(state: TrainState, params: Any, x: jax.Array, mask: jax.Array, train: bool) -> tuple[jax.Array, Any]:
    """Logits and updated BatchNorm statistics; BN batch statistics use only rows where `mask`."""
    v = {"params": params}
    if state.batch_stats:
        v["batch_stats"] = state.batch_stats
        if train:
            logits, upd = state.apply_fn(v, x, train=True, mask=mask, mutable=["batch_stats"])
            return logits, upd["batch_stats"]
    return state.apply_fn(v, x, train=train, mask=mask), state.batch_stats
