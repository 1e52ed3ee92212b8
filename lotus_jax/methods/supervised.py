"""Supervised training of the original model (on D_f ∪ D_r) and the gold model (on D_r), SPEC §6."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lotus_jax.data import pipeline
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
    masked_mean,
    variables_of,
)


def train_step(state: TrainState, batch: dict, key: jax.Array, *, prep) -> tuple[TrainState, dict]:
    """One SGD step of cross-entropy on augmented images; padded rows (mask False) count nowhere."""
    x = prep(batch["image"], key)

    def loss_fn(params):
        logits, new_bs = forward(state, params, x, batch["mask"], train=True)
        return cross_entropy(logits, batch["label"], batch["mask"]), (logits, new_bs)

    (loss, (logits, new_bs)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    state = state.apply_gradients(grads=grads, batch_stats=new_bs)
    acc = masked_mean((jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32), batch["mask"])
    return state, {"loss": loss, "accuracy": acc, "grad_norm": optax.tree.norm(grads)}


def train(ctx: Context, variables: Variables, indices: np.ndarray, cfg, key: jax.Array, name: str) -> Variables:
    """Trains `variables` on training-source `indices` for `cfg.epochs` epochs; logs one line per epoch.

    Resumable: each epoch ends with a checkpoint (`ctx.cursor(name)`), and a rerun continues from it.
    """
    pipeline.check_batch_size(cfg.batch_size, ctx.mesh)
    steps = pipeline.num_batches(len(indices), cfg.batch_size)
    state = create_state(ctx.model, variables, make_optimizer(cfg.optimizer, steps), ctx.mesh)
    step = jax.jit(functools.partial(train_step, prep=ctx.prep), donate_argnums=0)
    cursor = ctx.cursor(name, cfg)
    state = cursor.restore(state)
    for epoch in cursor.epochs(int(cfg.epochs)):
        t = Timer()
        rng = np.random.default_rng([ctx.seed, 3, epoch])
        state, m = cursor.run_phase(step, state, epoch_batches(ctx, indices, cfg.batch_size, rng),
                                    key=jax.random.fold_in(key, epoch))
        sec = t()
        cursor.end_epoch(state, {"loss": m["loss"], "accuracy": m["accuracy"], "seconds": sec})
        ctx.log(f"[{name}] epoch {epoch + 1}/{cfg.epochs}  loss {m['loss']:.4f}  train acc {m['accuracy']:.4f}  "
                f"grad norm {m['grad_norm']:.3f}  {sec:.1f}s  {len(indices) / max(sec, 1e-9):.0f} img/s  "
                f"ETA {cursor.eta(int(cfg.epochs)):.0f}s")
    ctx.log(f"[{name}] trained {cfg.epochs} epochs on {len(indices)} examples in {cursor.elapsed():.1f}s")
    return variables_of(state)
