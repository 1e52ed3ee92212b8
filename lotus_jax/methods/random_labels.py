"""Random labels (docs/definitions.md §4, after Graves et al., "Amnesiac Machine Learning"): relabel the forget set with
random wrong labels and train on it, then repair on the retain set with the true labels.

Not fixed by the description, and chosen here: each epoch is one pass over D_f with relabelled targets
followed by one pass over D_r (separate shuffled passes, D_f first); the wrong labels are uniform over the
`k - 1` classes other than the true one and drawn afresh every epoch from `ctx.seed` (never the true label,
so every forget step is a step away from the learnt answer); SGD with momentum 0.9 as in the reference; batch
128; BatchNorm in training mode in both passes.
"""

from __future__ import annotations

import functools

import jax
import ml_collections as mlc
import numpy as np

from lotus_jax.data.pipeline import num_batches
from lotus_jax.errors import ConfigError
from lotus_jax.methods.finetune import ce_step
from lotus_jax.train.context import Context
from lotus_jax.train.optim import make_optimizer, optimizer_config
from lotus_jax.train.runner import Phase, Plan, stage_salt
from lotus_jax.train.state import Variables, create_state


def default_config() -> mlc.ConfigDict:
    """docs/definitions.md §4: SGD lr 1e-3, momentum 0.9, weight decay 5e-4; 10 epochs (ResNet-18), batch 128."""
    return mlc.ConfigDict(dict(epochs=10, batch_size=128,
                               optimizer=optimizer_config("sgd", 1e-3, 5e-4, momentum=0.9)))


def wrong_labels(labels: np.ndarray, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    """For each label y, a label drawn uniformly from the `num_classes - 1` classes other than y.

    `(y + u) mod k` with `u ~ U{1, ..., k-1}` is uniform over the other classes and never equals y.
    """
    if num_classes < 2:
        raise ConfigError(f"wrong labels need at least 2 classes, got {num_classes}")
    labels = np.asarray(labels).astype(np.int64)
    offsets = rng.integers(1, num_classes, size=labels.shape)
    return ((labels + offsets) % num_classes).astype(np.int32)


def plan(ctx: Context, original: Variables, cfg, key: jax.Array) -> Plan:
    """Per epoch: D_f with fresh wrong labels, then D_r with true labels (labels drawn from `ctx.seed`)."""
    del key
    forget, retain = ctx.splits.forget, ctx.splits.retain
    labels = ctx.dataset.train.labels
    steps = num_batches(len(forget), cfg.batch_size) + num_batches(len(retain), cfg.batch_size)
    step = functools.partial(ce_step, prep=ctx.prep)
    retain_targets = {"target": labels[retain].astype(np.int32)}  # same batch structure as the forget pass

    def phases(epoch: int, info: dict) -> list[Phase]:
        rng = np.random.default_rng([ctx.seed, stage_salt("random_labels/targets"), epoch])
        targets = {"target": wrong_labels(labels[forget], ctx.num_classes, rng)}
        return [Phase("forget", step, forget, args=(None,), extra=targets),
                Phase("retain", step, retain, args=(None,), extra=retain_targets)]

    return Plan(state=create_state(ctx.model, original, make_optimizer(cfg.optimizer, steps), ctx.mesh),
                batch_size=int(cfg.batch_size), epochs=int(cfg.epochs), phases=phases,
                summary=f"|D_f|={len(forget)} |D_r|={len(retain)} lr={cfg.optimizer.lr}")
