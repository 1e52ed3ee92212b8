"""LoTUS (docs/definitions.md §3): unlearning by Gumbel-smoothed self-distillation with a temperature set by the gap
between the student's accuracy on the forget set and the teacher's accuracy on unseen data.

The teacher is the original model (frozen, inference mode); the student starts as a copy of it. Forget
rows learn from soft Gumbel-softmax targets `softmax((z + g) / tau)`; retain rows from one-hot samples
`one_hot(argmax(z + g'))` of the teacher's distribution. `tau = exp(alpha * (acc_f - acc_u))` is high while
the student still knows the forget set better than unseen data, which flattens its forget targets.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np
import optax

from lotus_jax import sharding
from lotus_jax.train.context import Context
from lotus_jax.train.losses import soft_cross_entropy
from lotus_jax.train.optim import make_optimizer, optimizer_config
from lotus_jax.train.runner import Phase, Plan
from lotus_jax.train.state import TrainState, Variables, create_state, forward, place, variables_of


def default_config() -> mlc.ConfigDict:
    """docs/definitions.md §3 for ResNet-18 on CIFAR-10: AdamW lr 1e-4, wd 5e-4, 10 epochs, batch 128, alpha 8."""
    return mlc.ConfigDict(dict(epochs=10, batch_size=128, alpha=8.0, retain_fraction=0.3, stop_threshold=-0.01,
                               compat=False, cache_teacher=True, optimizer=optimizer_config("adamw", 1e-4, 5e-4)))


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


def lotus_step(state: TrainState, batch: dict, teacher: Variables, tau: jax.Array, key: jax.Array, *, prep
               ) -> tuple[TrainState, dict]:
    """One LoTUS update: teacher logits (stop-gradient) -> Gumbel targets -> soft cross-entropy -> optax.

    `batch` holds 'image', 'mask' and 'forget' (1 for D_f rows, 0 for D_r' rows); labels are unused.
    `teacher` is the frozen original (inference mode). With 'teacher_logits' in the batch (precomputed once
    by `plan` when the images are not augmented, so the teacher's output per example never changes), the
    step skips the teacher's forward pass. `tau` is a traced argument, so a new temperature never
    recompiles the step.
    """
    x = prep(batch["image"])
    if "teacher_logits" in batch:
        teacher_logits = batch["teacher_logits"]
    else:
        teacher_logits = jax.lax.stop_gradient(state.apply_fn(teacher, x, train=False))
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


@functools.partial(jax.jit, static_argnums=(0, 1))
def inference_logits(model, prep, variables: Variables, images: jax.Array) -> jax.Array:
    """Logits of `model` in inference mode; jitted once per (model, preprocessing), not once per LoTUS run."""
    return model.apply(variables, prep(images), train=False)


def teacher_logits(ctx: Context, teacher: Variables, indices: np.ndarray) -> np.ndarray:
    """The teacher's (inference-mode) logits of the training examples `indices`, in order: one batched pass
    (gathered from every process, so each holds all of them)."""
    out = []
    with ctx.batches(indices, ctx.eval_batch_size) as batches:
        for batch in batches:
            logits = inference_logits(ctx.model, ctx.prep, teacher, batch["image"])
            logits, mask = sharding.to_host((logits, batch["mask"]))
            out.append(np.asarray(logits, np.float32)[np.asarray(mask, bool)])
    return np.concatenate(out)


def plan(ctx: Context, original: Variables, cfg, key: jax.Array) -> Plan:
    """D_r' once, acc_u once, then per epoch: acc_f of the student -> stop? -> tau -> one pass of updates.

    Without augmentation of the unlearning batches, the teacher's logits of D_f + D_r' are computed once
    here (`cfg.cache_teacher`) instead of in every step. All of it is inside the timed unlearning call (the
    runner times from before this function).
    """
    del key  # the runner passes each step its own key
    decimals = 2 if cfg.get("compat", False) else None
    alpha, threshold = float(cfg.alpha), cfg.get("stop_threshold")
    sub = retain_subset(ctx.splits.retain, float(cfg.retain_fraction), ctx.seed)
    indices = np.concatenate([ctx.splits.forget, sub])
    flags = np.concatenate([np.ones(len(ctx.splits.forget), np.int32), np.zeros(len(sub), np.int32)])
    acc_u = 0.0 if ctx.splits.class_unlearning else ctx.evaluate(original, "val").accuracy
    teacher = place(original, ctx.mesh)
    step = functools.partial(lotus_step, prep=ctx.prep)
    extra = {"forget": flags}
    augmented = ctx.unlearn_augment and ctx.prep.augment != "none"
    if cfg.get("cache_teacher", True) and not augmented:
        extra["teacher_logits"] = teacher_logits(ctx, teacher, indices)

    def before_epoch(state: TrainState, epoch: int) -> dict:
        acc_f = ctx.evaluate(variables_of(state), "forget").accuracy
        stop = should_stop(acc_f, acc_u, threshold, decimals)
        return {"acc_f": acc_f, "tau": None if stop else temperature(acc_f, acc_u, alpha, decimals), "stopped": stop}

    def phases(epoch: int, info: dict) -> list[Phase]:
        return [Phase("unlearn", step, indices, args=(teacher, jnp.float32(info["tau"])), extra=extra,
                      keyed=True)]

    return Plan(state=create_state(ctx.model, original, make_optimizer(cfg.optimizer), ctx.mesh),
                batch_size=int(cfg.batch_size), epochs=int(cfg.epochs), phases=phases, before_epoch=before_epoch,
                summary=f"|D_f|={len(ctx.splits.forget)} |D_r'|={len(sub)} acc_u={acc_u:.4f} alpha={alpha}",
                extra={"acc_u": acc_u})
