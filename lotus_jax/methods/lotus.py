"""LoTUS (SPEC §3): unlearning by Gumbel-smoothed self-distillation with a temperature set by the gap
between the student's accuracy on the forget set and the teacher's accuracy on unseen data.

The teacher is the original model (frozen, inference mode); the student starts as a copy of it. Forget
rows learn from soft Gumbel-softmax targets `softmax((z + g) / tau)`; retain rows from one-hot samples
`one_hot(argmax(z + g'))` of the teacher's distribution. `tau = exp(alpha * (acc_f - acc_u))` is high while
the student still knows the forget set better than unseen data, which flattens its forget targets.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np
import optax

from lotus_jax.data import pipeline
from lotus_jax.methods.base import MethodResult
from lotus_jax.methods.common import (
    Context,
    Timer,
    TrainState,
    Variables,
    create_state,
    epoch_batches,
    forward,
    make_optimizer,
    optimizer_config,
    soft_cross_entropy,
    variables_of,
)


def default_config() -> mlc.ConfigDict:
    """SPEC §3 for ResNet-18 on CIFAR-10: AdamW lr 1e-4, wd 5e-4, 10 epochs, batch 128, alpha 8."""
    return mlc.ConfigDict(dict(epochs=10, batch_size=128, alpha=8.0, retain_fraction=0.3, stop_threshold=-0.01,
                               compat=False, optimizer=optimizer_config("adamw", 1e-4, 5e-4)))


class LotusState(TrainState):
    """Student train state plus the frozen teacher's variables (never updated)."""

    teacher: Any = None


def forget_targets(teacher_logits: jax.Array, tau: jax.Array, key: jax.Array) -> jax.Array:
    """Soft Gumbel-softmax targets `softmax((z + g) / tau)`, g ~ Gumbel(0, 1) i.i.d."""
    g = jax.random.gumbel(key, teacher_logits.shape, jnp.float32)
    return jax.nn.softmax((teacher_logits.astype(jnp.float32) + g) / tau, axis=-1)


def retain_targets(teacher_logits: jax.Array, key: jax.Array) -> jax.Array:
    """One-hot samples of softmax(z) by the Gumbel-max trick: `one_hot(argmax(z + g))`."""
    g = jax.random.gumbel(key, teacher_logits.shape, jnp.float32)
    z = teacher_logits.astype(jnp.float32) + g
    return jax.nn.one_hot(jnp.argmax(z, axis=-1), z.shape[-1], dtype=jnp.float32)


def lotus_targets(teacher_logits: jax.Array, is_forget: jax.Array, tau: jax.Array, key: jax.Array) -> jax.Array:
    """Per-row targets: forget rows (is_forget=1) soft Gumbel-softmax at `tau`, retain rows one-hot samples.

    The two use independent Gumbel draws.
    """
    kf, kr = jax.random.split(key)
    soft = forget_targets(teacher_logits, tau, kf)
    hard = retain_targets(teacher_logits, kr)
    return jnp.where(is_forget[:, None].astype(bool), soft, hard)


def round_acc(x: float, decimals: int | None) -> float:
    return float(x) if decimals is None else round(float(x), decimals)


def temperature(acc_f: float, acc_u: float, alpha: float, decimals: int | None = None) -> float:
    """tau = exp(alpha * (acc_f - acc_u)); accuracies rounded to `decimals` first in compat mode."""
    return math.exp(alpha * (round_acc(acc_f, decimals) - round_acc(acc_u, decimals)))


def should_stop(acc_f: float, acc_u: float, threshold: float | None, decimals: int | None = None) -> bool:
    """The reference's stopping rule: stop before an epoch when acc_f - acc_u <= threshold (-0.01)."""
    if threshold is None:
        return False
    return round_acc(acc_f, decimals) - round_acc(acc_u, decimals) <= threshold + 1e-9


def lotus_step(state: LotusState, batch: dict, tau: jax.Array, key: jax.Array, *, prep
               ) -> tuple[LotusState, dict]:
    """One LoTUS update: teacher logits (stop-gradient) -> Gumbel targets -> soft cross-entropy -> optax.

    `batch` holds 'image', 'mask' and 'forget' (1 for D_f rows, 0 for D_r' rows); labels are unused.
    `tau` is a traced argument, so a new temperature never recompiles the step.
    """
    x = prep(batch["image"])
    teacher_logits = jax.lax.stop_gradient(state.apply_fn(state.teacher, x, train=False))
    targets = lotus_targets(teacher_logits, batch["forget"], tau, key)

    def loss_fn(params):
        logits, new_bs = forward(state, params, x, batch["mask"], train=True)
        return soft_cross_entropy(logits, targets, batch["mask"]), new_bs

    (loss, new_bs), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    state = state.apply_gradients(grads=grads, batch_stats=new_bs)
    return state, {"loss": loss, "grad_norm": optax.tree.norm(grads)}


def retain_subset(retain: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """The seeded subset D_r' of `fraction` of the retain indices, sampled once before unlearning."""
    rng = np.random.default_rng([seed, 4])
    k = max(1, int(round(fraction * len(retain))))
    return np.sort(rng.choice(retain, size=k, replace=False))


def unlearn(ctx: Context, original: Variables, cfg, key: jax.Array) -> MethodResult:
    """The LoTUS driver: D_r' once, acc_u once, then per epoch acc_f -> stop? -> tau -> updates.

    The measured time covers the whole call (sub-sampling, acc_u, per-epoch acc_f passes and updates), over
    every session when a run is resumed from its per-epoch checkpoints.
    """
    pipeline.check_batch_size(cfg.batch_size, ctx.mesh)
    cursor = ctx.cursor("lotus", cfg)
    decimals = 2 if cfg.get("compat", False) else None
    sub = retain_subset(ctx.splits.retain, float(cfg.retain_fraction), ctx.seed)
    indices = np.concatenate([ctx.splits.forget, sub])
    flags = np.concatenate([np.ones(len(ctx.splits.forget), np.int32), np.zeros(len(sub), np.int32)])
    acc_u = 0.0 if ctx.splits.class_unlearning else ctx.evaluate(original, "val").accuracy
    state = create_state(ctx.model, original, make_optimizer(cfg.optimizer), ctx.mesh, LotusState,
                         teacher=original)
    state = cursor.restore(state)
    step = jax.jit(functools.partial(lotus_step, prep=ctx.prep), donate_argnums=0)
    ctx.log(f"[lotus] |D_f|={len(ctx.splits.forget)} |D_r'|={len(sub)} acc_u={acc_u:.4f} alpha={cfg.alpha}")
    for epoch in cursor.epochs(int(cfg.epochs)):
        t = Timer()
        if cursor.epoch_info is None:  # not restored mid-epoch: measure the student now
            acc_f = ctx.evaluate(variables_of(state), "forget").accuracy
            stop = should_stop(acc_f, acc_u, cfg.get("stop_threshold"), decimals)
            cursor.epoch_info = {"acc_f": acc_f, "stop": stop,
                                 "tau": None if stop else temperature(acc_f, acc_u, float(cfg.alpha), decimals)}
        acc_f, tau = cursor.epoch_info["acc_f"], cursor.epoch_info["tau"]
        if cursor.epoch_info["stop"]:
            ctx.log(f"[lotus] epoch {epoch + 1}: acc_f {acc_f:.4f} - acc_u {acc_u:.4f} <= {cfg.stop_threshold}: stop")
            cursor.history.append({"epoch": epoch + 1, "acc_f": acc_f, "tau": None, "loss": None, "seconds": t(),
                                   "stopped": True})
            break
        rng = np.random.default_rng([ctx.seed, 5, epoch])
        state, m = cursor.run_phase(step, state, epoch_batches(ctx, indices, cfg.batch_size, rng, {"forget": flags}),
                                    jnp.float32(tau), key=jax.random.fold_in(key, epoch))
        sec = t()
        cursor.end_epoch(state, {"acc_f": acc_f, "tau": tau, "loss": m["loss"], "seconds": sec, "stopped": False})
        ctx.log(f"[lotus] epoch {epoch + 1}/{cfg.epochs}  acc_f {acc_f:.4f}  tau {tau:.4f}  loss {m['loss']:.4f}  "
                f"grad norm {m['grad_norm']:.3f}  {sec:.1f}s  ETA {cursor.eta(int(cfg.epochs)):.0f}s")
    variables = jax.block_until_ready(variables_of(state))
    return MethodResult(variables=variables, time_s=cursor.elapsed(), history=cursor.history, extra={"acc_u": acc_u})
