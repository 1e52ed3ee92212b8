"""What every method shares: train state, forward pass, losses, optimizers, the evaluation pass and the
context a method's driver receives."""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np
import optax
from flax.training import train_state
from jax.sharding import Mesh

from lotus_jax import sharding
from lotus_jax.data import pipeline
from lotus_jax.data.sources import Dataset, Source
from lotus_jax.data.splits import Splits
from lotus_jax.data.transforms import Preprocess
from lotus_jax.errors import ConfigError
from lotus_jax.metrics.stats import batch_statistics
from lotus_jax.progress import Cursor

Variables = dict[str, Any]
Log = Callable[[str], None]


class TrainState(train_state.TrainState):
    """Flax train state plus BatchNorm statistics (an empty dict for models without BatchNorm)."""

    batch_stats: Any = None


def variables_of(state: TrainState) -> Variables:
    """The model variables {'params', 'batch_stats'?} of a train state."""
    v = {"params": state.params}
    if state.batch_stats:
        v["batch_stats"] = state.batch_stats
    return v


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Places every leaf of `tree` on `mesh` by the FSDP rule (`sharding.partition_spec`): large arrays split
    along `fsdp`, the rest replicated; everything replicated when fsdp=1. Leaves already placed so are kept."""
    return sharding.shard_variables(tree, mesh)


def create_state(model: nn.Module, variables: Variables, tx: optax.GradientTransformation, mesh: Mesh,
                 state_cls: type[TrainState] = TrainState, **extra: Any) -> TrainState:
    """A train state (optimizer initialised) for `variables`, placed on `mesh` by the FSDP rule.

    Large arrays are split along `fsdp`, small ones replicated (`sharding.partition_spec`). The optimizer
    state is created in place by a jitted `tx.init` whose outputs follow the same rule, so each moment has
    its parameter's sharding (the rule depends only on the shape) and no full copy lands on one device.
    """
    # Own buffers for everything in the state: jitted steps donate it, and the caller keeps its arrays.
    variables, extra = sharding.shard_variables((variables, extra), mesh, copy=True)
    params = variables["params"]
    opt_state = jax.jit(tx.init, out_shardings=sharding.shardings(jax.eval_shape(tx.init, params), mesh))(params)
    step = sharding.shard_variables(jnp.zeros((), jnp.int32), mesh)
    return state_cls(step=step, apply_fn=model.apply, params=params, tx=tx, opt_state=opt_state,
                     batch_stats=variables.get("batch_stats", {}), **extra)


def forward(state: TrainState, params: Any, x: jax.Array, mask: jax.Array, train: bool
            ) -> tuple[jax.Array, Any]:
    """Logits and updated BatchNorm statistics; BN batch statistics use only rows where `mask`."""
    v = {"params": params}
    if state.batch_stats:
        v["batch_stats"] = state.batch_stats
        if train:
            logits, upd = state.apply_fn(v, x, train=True, mask=mask, mutable=["batch_stats"])
            return logits, upd["batch_stats"]
    return state.apply_fn(v, x, train=train, mask=mask), state.batch_stats


def masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean of `values` over rows where `mask` (0 when no row is valid)."""
    m = mask.astype(jnp.float32)
    return jnp.sum(values * m) / jnp.maximum(jnp.sum(m), 1.0)


def soft_cross_entropy(logits: jax.Array, targets: jax.Array, mask: jax.Array) -> jax.Array:
    """mean_i [-sum_c t_ic log softmax(logits_i)_c] over valid rows, in float32."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32))
    return masked_mean(-jnp.sum(targets * logp, axis=-1), mask)


def cross_entropy(logits: jax.Array, labels: jax.Array, mask: jax.Array) -> jax.Array:
    """Cross-entropy with integer labels, mean over valid rows."""
    return masked_mean(optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels), mask)


def kl_divergence(target_logits: jax.Array, logits: jax.Array, mask: jax.Array, temperature: float = 1.0
                  ) -> jax.Array:
    """mean_i KL(softmax(target/T) || softmax(logits/T)) over valid rows."""
    t = jax.nn.log_softmax(target_logits.astype(jnp.float32) / temperature)
    s = jax.nn.log_softmax(logits.astype(jnp.float32) / temperature)
    return masked_mean(jnp.sum(jnp.exp(t) * (t - s), axis=-1), mask)


OPTIMIZERS = ("sgd", "adam", "adamw")


def optimizer_config(name: str, lr: float, weight_decay: float = 0.0, momentum: float = 0.0,
                     schedule: str = "constant", warmup_epochs: float = 0.0, epochs: int = 1) -> mlc.ConfigDict:
    """The optimizer section of a config, read by `make_optimizer`."""
    return mlc.ConfigDict(dict(name=name, lr=lr, weight_decay=weight_decay, momentum=momentum, schedule=schedule,
                               warmup_epochs=warmup_epochs, epochs=epochs))


def make_optimizer(opt_cfg, steps_per_epoch: int = 1) -> optax.GradientTransformation:
    """optax optimizer from {name, lr, momentum, weight_decay, schedule, warmup_epochs, epochs}.

    `sgd` and `adam` add L2 weight decay to the gradient (torch's `weight_decay`); `adamw` decouples it.
    `schedule`: `constant` or `cosine` (linear warm-up for `warmup_epochs`, then cosine to 0).
    """
    name, lr = opt_cfg.name, float(opt_cfg.lr)
    wd = float(opt_cfg.get("weight_decay", 0.0) or 0.0)
    if opt_cfg.get("schedule", "constant") == "cosine":
        total = max(1, int(opt_cfg.epochs) * steps_per_epoch)
        warm = min(total - 1, int(float(opt_cfg.get("warmup_epochs", 0)) * steps_per_epoch))
        lr = (optax.warmup_cosine_decay_schedule(0.0, lr, warm, total) if warm > 0
              else optax.cosine_decay_schedule(lr, total))
    if name == "sgd":
        m = opt_cfg.get("momentum", 0.0) or None
        return optax.chain(optax.add_decayed_weights(wd), optax.sgd(lr, momentum=m))
    if name == "adam":
        return optax.chain(optax.add_decayed_weights(wd), optax.adam(lr))
    if name == "adamw":
        return optax.adamw(lr, weight_decay=wd)
    raise ConfigError(f"unknown optimizer {name!r}; valid: {', '.join(OPTIMIZERS)}")


def make_eval_fn(model: nn.Module, prep: Preprocess, num_classes: int) -> Callable:
    """Jitted (variables, batch, keep_probs) -> batch statistics of the model in inference mode."""

    def fn(variables: Variables, batch: dict, keep_probs: bool) -> dict:
        logits = model.apply(variables, prep(batch["image"]), train=False)
        stats = batch_statistics(logits, batch["label"], batch["mask"], num_classes)
        return stats if keep_probs else {k: v for k, v in stats.items() if k != "probs"}

    return jax.jit(fn, static_argnums=2)


@dataclasses.dataclass
class SplitStats:
    """Per-example (correct, entropy, labels, optional probs) and per-class (prob_sums, counts) statistics."""

    correct: np.ndarray
    entropy: np.ndarray
    labels: np.ndarray
    prob_sums: np.ndarray
    counts: np.ndarray
    probs: np.ndarray | None = None

    @property
    def accuracy(self) -> float:
        return float(np.mean(self.correct)) if len(self.correct) else float("nan")


@dataclasses.dataclass
class Context:
    """Everything a method's driver needs, built once by `main` and shared by all methods."""

    model: nn.Module
    prep: Preprocess
    dataset: Dataset
    splits: Splits
    mesh: Mesh
    eval_fn: Callable
    init_fn: Callable[[jax.Array], Variables]
    eval_batch_size: int
    seed: int
    log: Log = print
    progress_dir: Path | None = None  # per-stage epoch checkpoints (None: none are written)
    stop: threading.Event = dataclasses.field(default_factory=threading.Event)  # set by SIGINT/SIGTERM

    def cursor(self, name: str, settings: Any = None) -> Cursor:
        """The epoch cursor of stage `name`: checkpoints in `progress_dir/name`, stop requests, NaN checks.

        `settings` (the stage's config) is stored with each checkpoint; other settings start afresh.
        """
        if settings is not None and hasattr(settings, "to_json_best_effort"):
            settings = json.loads(settings.to_json_best_effort())
        return Cursor(name, None if self.progress_dir is None else self.progress_dir / name, self.stop, self.log,
                      settings=settings)

    def init_variables(self, key: jax.Array) -> Variables:
        """Freshly initialised variables of the model (e.g. Bad Teacher's incompetent teacher), created
        directly on the mesh by the FSDP rule (a jitted init with those output shardings)."""
        shapes = jax.eval_shape(self.init_fn, key)
        return jax.jit(self.init_fn, out_shardings=sharding.shardings(shapes, self.mesh))(key)

    @property
    def num_classes(self) -> int:
        return self.dataset.num_classes

    def split_source(self, split: str) -> tuple[Source, np.ndarray]:
        """(source, indices) of 'forget' | 'retain' | 'val' | 'test'."""
        src = self.dataset.train if split in ("forget", "retain") else self.dataset.heldout
        return src, getattr(self.splits, split)

    def evaluate(self, variables: Variables, split: str, keep_probs: bool = False) -> SplitStats:
        """One batched pass of the model (inference mode) over a split; every example counted once."""
        source, indices = self.split_source(split)
        return evaluate_indices(self.eval_fn, variables, source, indices, self.eval_batch_size, self.mesh,
                                self.num_classes, keep_probs)


def evaluate_indices(eval_fn: Callable, variables: Variables, source: Source, indices: np.ndarray,
                     batch_size: int, mesh: Mesh, num_classes: int, keep_probs: bool = False) -> SplitStats:
    """Runs `eval_fn` over `indices` in padded batches and gathers the valid rows on the host.

    With several processes each reads its rows of every batch; the statistics are gathered on all of
    them, in the global batch order, so every process gets the one-process result.
    """
    per_example: dict[str, list] = {"correct": [], "entropy": [], "labels": [], "probs": []}
    prob_sums = np.zeros((num_classes, num_classes), np.float64)
    counts = np.zeros(num_classes, np.int64)
    variables = replicate(variables, mesh)
    it = pipeline.prefetch(pipeline.batches(source, indices, batch_size), mesh)
    for batch in it:
        out, m, labels = sharding.to_host((eval_fn(variables, batch, keep_probs), batch["mask"], batch["label"]))
        m = np.asarray(m, bool)
        per_example["correct"].append(out["correct"][m])
        per_example["entropy"].append(out["entropy"][m])
        per_example["labels"].append(np.asarray(labels)[m])
        if keep_probs:
            per_example["probs"].append(out["probs"][m])
        prob_sums += out["prob_sums"]
        counts += out["counts"].astype(np.int64)
    cat = lambda xs, shape: np.concatenate(xs) if xs else np.zeros(shape)  # noqa: E731
    return SplitStats(
        correct=cat(per_example["correct"], (0,)).astype(bool), entropy=cat(per_example["entropy"], (0,)),
        labels=cat(per_example["labels"], (0,)).astype(np.int64), prob_sums=prob_sums, counts=counts,
        probs=cat(per_example["probs"], (0, num_classes)) if keep_probs else None)


def epoch_batches(ctx: "Context", indices: np.ndarray, batch_size: int, rng: np.random.Generator | None = None,
                  extra: dict[str, np.ndarray] | None = None):
    """Padded, masked batches of training-source `indices` (shuffled by `rng`), prefetched onto the mesh."""
    return pipeline.prefetch(pipeline.batches(ctx.dataset.train, indices, batch_size, rng=rng, extra=extra),
                             ctx.mesh)


class Timer:
    """Wall-clock seconds since construction."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    def __call__(self) -> float:
        return time.perf_counter() - self.start
