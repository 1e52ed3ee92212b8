"""Finetune (docs/definitions.md §4): keep training the original model on the retain set D_r with cross-entropy,
relying on catastrophic forgetting of D_f.

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

from lotus_jax.data.pipeline import num_batches
from lotus_jax.train.context import Context
from lotus_jax.train.losses import cross_entropy
from lotus_jax.train.optim import make_optimizer, optimizer_config
from lotus_jax.train.runner import Phase, Plan
from lotus_jax.train.state import TrainState, Variables, create_state, forward

def default_config() -> mlc.ConfigDict:
    """docs/definitions.md §4: SGD momentum 0.9, lr 1e-3, weight decay 5e-4; 10 epochs (ResNet-18), batch 128."""
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


def plan(ctx: Context, original: Variables, cfg, key: jax.Array) -> Plan:
    """Cross-entropy training on D_r for `cfg.epochs` epochs (nothing in the update is random)."""
    del key
    retain = ctx.splits.retain
    tx = make_optimizer(cfg.optimizer, num_batches(len(retain), cfg.batch_size))
    step = functools.partial(ce_step, prep=ctx.prep)
    return Plan(state=create_state(ctx.model, original, tx, ctx.mesh), batch_size=int(cfg.batch_size),
                epochs=int(cfg.epochs), phases=lambda epoch, info: [Phase("retain", step, retain, args=(None,))],
                summary=f"|D_r|={len(retain)} lr={cfg.optimizer.lr}")
