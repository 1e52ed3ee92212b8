"""NegGrad+ (docs/definitions.md §4, Kurmanji et al., "Towards Unbounded Machine Unlearning"): gradient descent on the
retain set and gradient ascent on the forget set in one loss, `beta * CE(D_r batch) - (1 - beta) * CE(D_f batch)`.

The loss is differentiated as written, so the forget term really ascends (the reference code negated
gradients before they were computed and so never did).

Not fixed by the paper, and chosen here: every step pairs one retain batch with one forget batch; an epoch
is as many steps as the larger of the two sets has batches, the smaller set is cycled (reshuffled on each
cycle); both batches use `batch_size`; the two batches go through the network in separate training-mode
forward passes (retain first, then forget), so BatchNorm batch statistics are per set, as with two PyTorch
forward calls, and the running statistics are updated by both; SGD with momentum 0.9 as in the reference code.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections as mlc

from lotus_jax.data.pipeline import num_batches
from lotus_jax.errors import ConfigError
from lotus_jax.train.context import Context
from lotus_jax.train.losses import cross_entropy
from lotus_jax.train.optim import make_optimizer, optimizer_config
from lotus_jax.train.runner import Phase, Plan
from lotus_jax.train.state import TrainState, Variables, create_state, forward

def default_config() -> mlc.ConfigDict:
    """docs/definitions.md §4: SGD lr 1e-3, momentum 0.9, weight decay 5e-4, beta 0.999; 10 epochs (ResNet-18),
    batch 128."""
    return mlc.ConfigDict(dict(epochs=10, batch_size=128, beta=0.999,
                               optimizer=optimizer_config("sgd", 1e-3, 5e-4, momentum=0.9)))


def neggrad_plus_loss(ce_retain: jax.Array, ce_forget: jax.Array, beta: jax.Array) -> jax.Array:
    """`beta * CE_r - (1 - beta) * CE_f`: descent on retain, ascent on forget."""
    return beta * ce_retain - (1.0 - beta) * ce_forget


def neggrad_plus_step(state: TrainState, batch: dict, beta: jax.Array, *, prep: Callable
                      ) -> tuple[TrainState, dict]:
    """One step on a pair `{'retain': batch, 'forget': batch}`; `beta` is traced (no recompile per value)."""
    r, f = batch["retain"], batch["forget"]
    xr, xf = prep(r["image"]), prep(f["image"])

    def loss_fn(params):
        logits_r, bs = forward(state, params, xr, r["mask"], train=True)
        logits_f, bs = forward(state.replace(batch_stats=bs), params, xf, f["mask"], train=True)
        ce_r = cross_entropy(logits_r, r["label"], r["mask"])
        ce_f = cross_entropy(logits_f, f["label"], f["mask"])
        return neggrad_plus_loss(ce_r, ce_f, beta), (bs, ce_r, ce_f)

    (loss, (new_bs, ce_r, ce_f)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    state = state.apply_gradients(grads=grads, batch_stats=new_bs)
    return state, {"loss": loss, "retain_ce": ce_r, "forget_ce": ce_f}


def plan(ctx: Context, original: Variables, cfg, key: jax.Array) -> Plan:
    """`cfg.epochs` epochs of paired NegGrad+ steps (nothing in the update is random)."""
    del key
    forget, retain = ctx.splits.forget, ctx.splits.retain
    if not len(forget) or not len(retain):
        raise ConfigError(f"neggrad_plus needs non-empty forget and retain sets, got |D_f|={len(forget)} and "
                          f"|D_r|={len(retain)}")
    beta = float(cfg.beta)
    steps = max(num_batches(len(retain), cfg.batch_size), num_batches(len(forget), cfg.batch_size))
    step = functools.partial(neggrad_plus_step, prep=ctx.prep)
    streams = {"retain": retain, "forget": forget}
    return Plan(state=create_state(ctx.model, original, make_optimizer(cfg.optimizer, steps), ctx.mesh),
                batch_size=int(cfg.batch_size), epochs=int(cfg.epochs),
                phases=lambda epoch, info: [Phase("pairs", step, streams, args=(jnp.float32(beta),))],
                summary=f"|D_f|={len(forget)} |D_r|={len(retain)} beta={beta} lr={cfg.optimizer.lr}")
