"""Supervised training of the original model (on D_f ∪ D_r) and the gold model (on D_r), docs/definitions.md §7."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lotus_jax.data.pipeline import num_batches
from lotus_jax.train import runner
from lotus_jax.train.context import Context
from lotus_jax.train.losses import cross_entropy, masked_mean
from lotus_jax.train.optim import make_optimizer
from lotus_jax.train.runner import Phase, Plan
from lotus_jax.train.state import TrainState, Variables, create_state, forward


def train_step(state: TrainState, batch: dict, key: jax.Array, *, prep) -> tuple[TrainState, dict]:
    """One step of cross-entropy on augmented images; padded rows (mask False) count nowhere."""
    x = prep(batch["image"], key)

    def loss_fn(params):
        logits, new_bs = forward(state, params, x, batch["mask"], train=True)
        return cross_entropy(logits, batch["label"], batch["mask"]), (logits, new_bs)

    (loss, (logits, new_bs)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    state = state.apply_gradients(grads=grads, batch_stats=new_bs)
    acc = masked_mean((jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32), batch["mask"])
    return state, {"loss": loss, "accuracy": acc, "grad_norm": optax.tree.norm(grads)}


def plan(ctx: Context, variables: Variables, indices: np.ndarray, cfg) -> Plan:
    """`cfg.epochs` shuffled epochs of `train_step` over training-source `indices`."""
    tx = make_optimizer(cfg.optimizer, num_batches(len(indices), cfg.batch_size))
    step = functools.partial(train_step, prep=ctx.prep)
    return Plan(state=create_state(ctx.model, variables, tx, ctx.mesh), batch_size=int(cfg.batch_size),
                epochs=int(cfg.epochs), phases=lambda epoch, info: [Phase("train", step, indices, keyed=True)],
                summary=f"{len(indices)} examples, {cfg.epochs} epochs, {cfg.optimizer.name} lr {cfg.optimizer.lr}")


def train(ctx: Context, variables: Variables, indices: np.ndarray, cfg, key: jax.Array, name: str) -> Variables:
    """Trains `variables` on `indices` as stage `name` (resumable from its epoch checkpoints)."""
    result = runner.run(ctx, name, lambda: plan(ctx, variables, indices, cfg), cfg, key)
    ctx.log(f"[{name}] trained {cfg.epochs} epochs on {len(indices)} examples in {result.time_s:.1f}s")
    return result.variables
