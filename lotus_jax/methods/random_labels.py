"""Random labels (SPEC §5, after Graves et al., "Amnesiac Machine Learning"): relabel the forget set with
random wrong labels and train on it, then repair on the retain set with the true labels.

Not fixed by the description, and chosen here: each epoch is one pass over D_f with relabelled targets
followed by one pass over D_r (separate shuffled passes, D_f first); the wrong labels are uniform over the
`k - 1` classes other than the true one and drawn afresh every epoch from `ctx.seed` (never the true label,
so every forget step is a step away from the learnt answer); SGD without momentum as SPEC §5 lists; batch
128; BatchNorm in training mode in both passes.
"""

from __future__ import annotations

import jax
import ml_collections as mlc
import numpy as np

from lotus_jax.data import pipeline
from lotus_jax.errors import ConfigError
from lotus_jax.methods.base import MethodResult
from lotus_jax.methods.common import (
    Context,
    Timer,
    Variables,
    create_state,
    epoch_batches,
    make_optimizer,
    optimizer_config,
    variables_of,
)
from lotus_jax.methods.finetune import make_ce_step


def default_config() -> mlc.ConfigDict:
    """SPEC §5: SGD lr 1e-3, weight decay 5e-4 (no momentum); 10 epochs (ResNet-18), batch 128."""
    return mlc.ConfigDict(dict(epochs=10, batch_size=128, optimizer=optimizer_config("sgd", 1e-3, 5e-4)))


def wrong_labels(labels: np.ndarray, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    """For each label y, a label drawn uniformly from the `num_classes - 1` classes other than y.

    `(y + u) mod k` with `u ~ U{1, ..., k-1}` is uniform over the other classes and never equals y.
    """
    if num_classes < 2:
        raise ConfigError(f"wrong labels need at least 2 classes, got {num_classes}")
    labels = np.asarray(labels).astype(np.int64)
    offsets = rng.integers(1, num_classes, size=labels.shape)
    return ((labels + offsets) % num_classes).astype(np.int32)


def unlearn(ctx: Context, original: Variables, cfg, key: jax.Array) -> MethodResult:
    """Per epoch: D_f with fresh wrong labels, then D_r with true labels. Labels and batch order come from
    `ctx.seed` (`key` is unused: the update itself has no randomness)."""
    cursor = ctx.cursor("random_labels", cfg)
    pipeline.check_batch_size(cfg.batch_size, ctx.mesh)
    forget, retain = ctx.splits.forget, ctx.splits.retain
    labels = ctx.dataset.train.labels
    steps = pipeline.num_batches(len(forget), cfg.batch_size) + pipeline.num_batches(len(retain), cfg.batch_size)
    state = create_state(ctx.model, original, make_optimizer(cfg.optimizer, steps), ctx.mesh)
    state = cursor.restore(state)
    step = make_ce_step(ctx)
    retain_targets = {"target": labels[retain].astype(np.int32)}  # same batch structure as the forget pass
    ctx.log(f"[random_labels] |D_f|={len(forget)} |D_r|={len(retain)} lr={cfg.optimizer.lr}")
    for epoch in cursor.epochs(int(cfg.epochs)):
        t = Timer()
        targets = wrong_labels(labels[forget], ctx.num_classes, np.random.default_rng([ctx.seed, 21, epoch]))
        rng_f, rng_r = (np.random.default_rng([ctx.seed, s, epoch]) for s in (22, 23))
        forget_batches = epoch_batches(ctx, forget, cfg.batch_size, rng_f, {"target": targets})
        state, mf = cursor.run_phase(step, state, forget_batches)
        state, mr = cursor.run_phase(step, state, epoch_batches(ctx, retain, cfg.batch_size, rng_r, retain_targets))
        loss_f, loss_r = mf["loss"], mr["loss"]
        sec = t()
        cursor.end_epoch(state, {"forget_loss": loss_f, "retain_loss": loss_r, "seconds": sec})
        ctx.log(f"[random_labels] epoch {epoch + 1}/{cfg.epochs}  forget (random labels) loss {loss_f:.4f}  "
                f"retain loss {loss_r:.4f}  {sec:.1f}s")
    variables = jax.block_until_ready(variables_of(state))
    return MethodResult(variables=variables, time_s=cursor.elapsed(), history=cursor.history)
