"""Finetune (SPEC §5): keep training the original model on the retain set D_r with cross-entropy, relying on
catastrophic forgetting of D_f.

Also home of the cross-entropy step and epoch loop shared with Random labels and SalUn: the step trains on
`batch['target']` when the batch carries one (relabelled forget rows) and on `batch['label']` otherwise, and
takes an optional boolean parameter mask (SalUn) outside of which no parameter moves.

Not fixed by the baseline's description, and chosen here: one shuffled pass over D_r per epoch, batch 128 (as
LoTUS), no augmentation, BatchNorm in training mode (as in any PyTorch fine-tuning loop).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np

from lotus_jax.data import pipeline
from lotus_jax.methods.base import MethodResult
from lotus_jax.methods.common import (
    Context,
    Timer,
    TrainState,
    Variables,
    create_state,
    cross_entropy,
    epoch_batches,
    forward,
    make_optimizer,
    optimizer_config,
    variables_of,
)

Step = Callable[[TrainState, dict], tuple[TrainState, dict]]


def default_config() -> mlc.ConfigDict:
    """SPEC §5: SGD momentum 0.9, lr 1e-3, weight decay 5e-4; 10 epochs (ResNet-18), batch 128."""
    return mlc.ConfigDict(dict(epochs=10, batch_size=128, optimizer=optimizer_config("sgd", 1e-3, 5e-4, 0.9)))


def masked_apply(state: TrainState, grads: Any, param_mask: Any, batch_stats: Any) -> TrainState:
    """An optimizer step in which only parameters where `param_mask` is True can move.

    Gradients are zeroed outside the mask before the optimizer (so momentum/Adam moments see nothing there),
    and the final updates are discarded outside the mask too (so weight decay cannot move those parameters):
    unmasked parameters stay bit-identical.
    """
    grads = jax.tree.map(lambda g, m: jnp.where(m, g, jnp.zeros_like(g)), grads, param_mask)
    updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
    params = jax.tree.map(lambda p, u, m: jnp.where(m, p + u.astype(p.dtype), p),
                          state.params, updates, param_mask)
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state, batch_stats=batch_stats)


def ce_step(state: TrainState, batch: dict, param_mask: Any | None, *, prep: Callable) -> tuple[TrainState, dict]:
    """One optimizer step of masked-mean cross-entropy (BatchNorm in training mode on valid rows).

    Labels are `batch['target']` if present, else `batch['label']`. `param_mask` is None (all parameters
    train) or a boolean pytree shaped like the parameters (see `masked_apply`).
    """
    x = prep(batch["image"])
    labels = batch["target"] if "target" in batch else batch["label"]

    def loss_fn(params):
        logits, new_bs = forward(state, params, x, batch["mask"], train=True)
        return cross_entropy(logits, labels, batch["mask"]), new_bs

    (loss, new_bs), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    if param_mask is None:
        state = state.apply_gradients(grads=grads, batch_stats=new_bs)
    else:
        state = masked_apply(state, grads, param_mask, new_bs)
    return state, {"loss": loss}


def make_ce_step(ctx: Context, param_mask: Any | None = None) -> Step:
    """`ce_step` jitted once (state donated), with `param_mask` bound: `(state, batch) -> (state, metrics)`."""
    jitted = jax.jit(functools.partial(ce_step, prep=ctx.prep), donate_argnums=0)
    return lambda state, batch: jitted(state, batch, param_mask)


def unlearn(ctx: Context, original: Variables, cfg, key: jax.Array) -> MethodResult:
    """Cross-entropy training on D_r for `cfg.epochs` epochs; batch order from `ctx.seed` (`key` is unused:
    the update has no randomness)."""
    cursor = ctx.cursor("finetune", cfg)
    pipeline.check_batch_size(cfg.batch_size, ctx.mesh)
    retain = ctx.splits.retain
    steps = pipeline.num_batches(len(retain), cfg.batch_size)
    state = create_state(ctx.model, original, make_optimizer(cfg.optimizer, steps), ctx.mesh)
    state = cursor.restore(state)
    step = make_ce_step(ctx)
    ctx.log(f"[finetune] |D_r|={len(retain)} lr={cfg.optimizer.lr}")
    for epoch in cursor.epochs(int(cfg.epochs)):
        t = Timer()
        rng = np.random.default_rng([ctx.seed, 11, epoch])
        state, m = cursor.run_phase(step, state, epoch_batches(ctx, retain, cfg.batch_size, rng))
        loss = m["loss"]
        sec = t()
        cursor.end_epoch(state, {"loss": loss, "seconds": sec})
        ctx.log(f"[finetune] epoch {epoch + 1}/{cfg.epochs}  retain loss {loss:.4f}  {sec:.1f}s")
    variables = jax.block_until_ready(variables_of(state))
    return MethodResult(variables=variables, time_s=cursor.elapsed(), history=cursor.history)
