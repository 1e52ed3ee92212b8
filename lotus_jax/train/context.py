"""The run context: what `main` builds once (model, data, splits, mesh, stop flag) and every stage receives."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh

from lotus_jax import sharding
from lotus_jax.data import loader
from lotus_jax.data.sources import Dataset, Source
from lotus_jax.data.splits import Splits
from lotus_jax.data.transforms import Preprocess
from lotus_jax.evaluate import SplitStats, Variables, evaluate_batches
from lotus_jax.models import jit_init

Log = Callable[[str], None]


@dataclasses.dataclass
class Context:
    """Everything a stage needs, built once by `main` and shared by all methods."""

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
    checkpoint_every_s: float = 0.0  # epoch checkpoints at most this often (0: every epoch; always the last)
    stop: threading.Event = dataclasses.field(default_factory=threading.Event)  # set by SIGINT/SIGTERM
    skip_corrupt: bool = False  # corrupt images become masked rows (counted) instead of stopping the run
    data_threads: int = -1  # host threads reading and decoding examples (-1: all cores)
    unlearn_augment: bool = False  # unlearning batches go through the training augmentation (as the reference)
    # Compiled steps by runner.step_id, filled by the runner: stages running the same step on states of one tree
    # structure (a population's members one by one) compile it once. Contexts made by dataclasses.replace share it.
    compiled: dict = dataclasses.field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return self.dataset.num_classes

    def init_variables(self, key: jax.Array) -> Variables:
        """Freshly initialised variables of the model, created directly on the mesh by the FSDP rule."""
        shapes = jax.eval_shape(self.init_fn, key)
        return jit_init(self.init_fn, out_shardings=sharding.shardings(shapes, self.mesh))(key)

    def split_source(self, split: str) -> tuple[Source, np.ndarray]:
        """(source, indices) of 'forget' | 'retain' | 'val' | 'test'."""
        src = self.dataset.train if split in ("forget", "retain") else self.dataset.heldout
        return src, getattr(self.splits, split)

    def batches(self, indices: np.ndarray, batch_size: int, *, source: Source | None = None,
                shuffle_seed: Sequence[int] | None = None, extra: dict[str, np.ndarray] | None = None,
                start_batch: int = 0) -> loader.EpochLoader:
        """Padded, masked device batches of `indices` of `source` (default: the training source), shuffled
        by `shuffle_seed` when given; a context manager that stops its reader threads on exit."""
        return loader.EpochLoader(self.dataset.train if source is None else source, indices, batch_size, self.mesh,
                                  shuffle_seed=shuffle_seed, extra=extra, start_batch=start_batch,
                                  skip_corrupt=self.skip_corrupt, num_threads=self.data_threads)

    def evaluate(self, variables: Variables, split: str, keep_probs: bool = False) -> SplitStats:
        """One batched pass of the model (inference mode) over a split; every example counted once."""
        source, indices = self.split_source(split)
        variables = sharding.shard_variables(variables, self.mesh)
        with self.batches(indices, self.eval_batch_size, source=source) as it:
            return evaluate_batches(self.eval_fn, variables, it, self.num_classes, keep_probs)
