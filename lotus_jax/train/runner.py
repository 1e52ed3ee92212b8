"""The one epoch loop. A method (or original/gold training) describes its work as a `Plan` — a train state,
the phases each epoch runs, optional per-epoch and final hooks — and `run` drives it: jit with donation,
batches on the mesh, timing, progress output, NaN guard, history, stop requests and exact resume.

Everything a run depends on is a pure function of (seed, stage, epoch, phase, step): the data order and the
PRNG keys. So a checkpoint of the state and the position is enough to continue bit-identically.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import time
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from lotus_jax.data.pipeline import check_batch_size, num_batches
from lotus_jax.train.context import Context
from lotus_jax.train.resume import StageCheckpoints
from lotus_jax.train.state import Variables, variables_of

LOG_EVERY_S = 60.0
AUGMENT_SALT = 0x5EED  # keys of the augmentation differ from the keys a keyed step receives


class Interrupted(Exception):
    """A stop was requested (SIGINT/SIGTERM); the current step finished and a checkpoint was written."""


class NonFiniteError(ArithmeticError):
    """A loss or gradient norm became NaN/inf; nothing after the last good checkpoint was saved."""


@dataclasses.dataclass(frozen=True)
class Phase:
    """One pass of `step(state, batch, *args[, key]) -> (state, metrics)` over `indices` of the training source.

    `indices` may map names to index arrays: each step then gets `{name: batch}`, the epoch lasts as many steps
    as the longest stream has batches and shorter streams are cycled, reshuffled each cycle. `extra` holds
    per-example arrays aligned with `indices` that ride along in the batch (a forget flag, a target label).
    `keyed` steps get a fresh PRNG key per step. Unshuffled phases read in index order.
    """

    name: str
    step: Callable
    indices: np.ndarray | Mapping[str, np.ndarray]
    args: tuple = ()
    extra: Mapping[str, np.ndarray] | None = None
    shuffle: bool = True
    keyed: bool = False


@dataclasses.dataclass
class Plan:
    """What the runner drives for one stage.

    `before_epoch(state, epoch) -> info` runs at the start of each epoch (LoTUS: acc_f, tau); `info` is stored
    in the history and checkpoints, passed to `phases(epoch, info)`, and `info["stopped"]` ends the stage early.
    `finish(state) -> variables` turns the final state into model variables (default: params + BN stats).
    With `epochs=0` only `finish` runs (one-shot methods).
    """

    state: Any
    batch_size: int
    epochs: int = 0
    phases: Callable[[int, dict], Sequence[Phase]] = lambda epoch, info: ()
    before_epoch: Callable[[Any, int], dict] | None = None
    finish: Callable[[Any], Variables] | None = None
    summary: str = ""
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class MethodResult:
    """Final variables, wall time of the whole call (over every session of a resumed run), per-epoch history."""

    variables: Variables
    time_s: float
    history: list[dict]
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)


def settings_json(cfg: Any) -> Any:
    """A config section as plain JSON values (what checkpoints compare to decide whether to resume)."""
    return json.loads(cfg.to_json_best_effort()) if hasattr(cfg, "to_json_best_effort") else cfg


def stage_salt(name: str) -> int:
    """A stable 31-bit number for a stage or phase name (seeds data orders and keys independent of list order)."""
    return zlib.crc32(name.encode()) & 0x7FFFFFFF


def step_id(step: Callable) -> Any:
    """What makes two steps the same function (one compilation serves both): a partial's function and bound
    values, else the function itself."""
    if isinstance(step, functools.partial):
        return step.func, step.args, tuple(sorted(step.keywords.items()))
    return step


def fold_batches(ctx: Context, fn: Callable, carry: Any, indices: np.ndarray, batch_size: int, *args: Any) -> Any:
    """`carry = fn(carry, batch, *args)` over unshuffled batches of training-source `indices` (a jitted `fn`).

    Each step is waited for before the next is dispatched: programs with collectives queued many deep can
    starve XLA's CPU thread pool (a rendezvous that never completes on several host-platform devices), and the
    host work between steps is small.
    """
    with ctx.batches(indices, batch_size) as it:
        for batch in it:
            carry = jax.block_until_ready(fn(carry, batch, *args))
    return carry


def _format(values: Mapping[str, Any]) -> str:
    """An epoch record as text; a population's per-member values as mean and range."""
    parts = []
    for k, v in values.items():
        if isinstance(v, bool) or v is None or k == "members":
            continue
        if isinstance(v, list) and v and all(isinstance(x, (int, float)) for x in v):
            parts.append(f"{k} {np.mean(v):.4f} [{min(v):.4f}, {max(v):.4f}]")
        else:
            parts.append(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}")
    return "  ".join(parts)


def _merge(names: Sequence[str], results: Sequence[dict[str, float]]) -> dict[str, float]:
    """One epoch record from per-phase metrics; a name that several phases report gets the phase's prefix."""
    counts: dict[str, int] = {}
    for r in results:
        for k in r:
            counts[k] = counts.get(k, 0) + 1
    return {(f"{n}_{k}" if counts[k] > 1 else k): v for n, r in zip(names, results) for k, v in r.items()}


def _eta(epoch_seconds: Sequence[float], remaining: int) -> float:
    """Seconds left: the mean epoch time of this session, leaving out the first (compilation) once there are more."""
    recent = epoch_seconds[1:] or epoch_seconds
    return sum(recent) / max(len(recent), 1) * remaining


class _Stage:
    """The loop's mutable position, restored from and written to `StageCheckpoints`."""

    members = 1  # models trained at once (a population stacks them on a leading axis)

    def __init__(self, ctx: Context, name: str, plan: Plan, ckpts: StageCheckpoints, key: jax.Array,
                 started: float, augment: bool, jitted: dict[Any, Callable] | None = None) -> None:
        self.ctx, self.name, self.plan, self.ckpts, self.key = ctx, name, plan, ckpts, key
        # Compiled steps by step_id: the run's (ctx.compiled), or the stage's own (a population's vmapped steps).
        self.jitted: dict[Any, Callable] = ctx.compiled if jitted is None else jitted
        # Training augmentation of every batch's images before the step (unlearning through the train transform).
        self.augment = self._jitted(("augment", ctx.prep), lambda: jax.jit(ctx.prep.augment_images)) if (
            augment and ctx.prep.augment != "none") else None
        self.state, pos = ckpts.restore(plan.state)
        pos = pos or {}
        self.epoch: int = pos.get("epoch", 0)
        self.history: list[dict] = pos.get("history", [])
        self.info: dict | None = pos.get("epoch_info")
        self.phase_results: list[dict] = pos.get("phase_results", [])
        self.resume_at = (pos.get("phase", 0), pos.get("steps_done", 0), pos.get("partial", {}))
        self.elapsed_before = pos.get("elapsed_s", 0.0)
        # A resumed stage counts the time saved with its checkpoint, not the set-up repeated before the restore.
        self.clock = time.perf_counter() if pos else started
        self.saved_at = time.perf_counter()  # the last checkpoint (or the start): epochs save at most so often
        self.epoch_seconds: list[float] = []  # this session's epochs, for the ETA
        if pos:
            ctx.log(f"[{name}] resuming: epoch {self.epoch + 1}, {len(self.phase_results)} phase(s) and "
                    f"{pos.get('steps_done', 0)} step(s) of it done")

    def _jitted(self, key: Any, make: Callable[[], Callable]) -> Callable:
        """The jitted function kept under `key`, made (once) by `make`."""
        if key not in self.jitted:
            self.jitted[key] = make()
        return self.jitted[key]

    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.clock - self.ckpts.saving_s

    def save(self, phase: int = 0, steps_done: int = 0, partial: dict | None = None) -> None:
        self.saved_at = time.perf_counter()
        self.ckpts.save(self.state, {"epoch": self.epoch, "phase": phase, "steps_done": steps_done,
                                     "partial": partial or {}, "phase_results": self.phase_results,
                                     "epoch_info": self.info, "history": self.history,
                                     "elapsed_s": self.elapsed()})

    def run(self) -> None:
        plan, ctx = self.plan, self.ctx
        while self.epoch < plan.epochs:
            t0 = time.perf_counter()
            if self.info is None:
                self.info = self._epoch_info()
            if self.info.get("stopped"):
                self.history.append({"epoch": self.epoch + 1, **self.info})
                ctx.log(f"[{self.name}] epoch {self.epoch + 1}: {_format(self.info)}: stop rule met, stopping")
                return
            images = 0
            phases = self._epoch_phases()
            for i, phase in enumerate(phases):
                if i < len(self.phase_results):
                    continue
                metrics, n = self.run_phase(i, phase)
                self.phase_results.append(metrics)
                images += n
            record = {**self.info, **_merge([p.name for p in phases], self.phase_results)}
            sec = time.perf_counter() - t0
            self.history.append({"epoch": self.epoch + 1, **record, "seconds": sec})
            self.epoch += 1
            self.info, self.phase_results = None, []
            if (self.epoch == plan.epochs or ctx.stop.is_set()
                    or time.perf_counter() - self.saved_at >= ctx.checkpoint_every_s):
                self.save()
            self.epoch_seconds.append(sec)
            eta = _eta(self.epoch_seconds, plan.epochs - self.epoch)
            ctx.log(f"[{self.name}] epoch {self.epoch}/{plan.epochs}  {_format(record)}  {sec:.1f}s  "
                    f"{images / max(sec, 1e-9):.0f} img/s  ETA {eta:.0f}s")
            if ctx.stop.is_set():
                raise Interrupted(f"{self.name}: stopped after epoch {self.epoch}; checkpoint saved in "
                                  f"{self.ckpts.directory}")

    # -- what a population of models (train.population) does differently ----------------------------------

    def _epoch_info(self) -> dict:
        """The plan's per-epoch hook on the current state (LoTUS: acc_f, tau, stopped)."""
        return dict(self.plan.before_epoch(self.state, self.epoch)) if self.plan.before_epoch else {}

    def _epoch_phases(self) -> Sequence[Phase]:
        return self.plan.phases(self.epoch, self.info)

    def _open(self, indices: Any, seed: tuple[int, ...] | None, extra: Any, start: int) -> Iterator[dict]:
        """A loader over `indices` from batch `start`; `seed` (phase, epoch, stream, cycle) follows the run seed."""
        return self.ctx.batches(indices, self.plan.batch_size, shuffle_seed=None if seed is None else
                                (self.ctx.seed, *seed), extra=extra, start_batch=start)

    def _compile(self, step: Callable) -> Callable:
        return jax.jit(step, donate_argnums=0)

    def _after_step(self, state: Any) -> Any:
        """The state after a step (a population puts its stopped members back)."""
        return state

    def _fold(self, key: jax.Array, data: int) -> jax.Array:
        return jax.random.fold_in(key, data)

    def _augment(self, images: jax.Array, key: jax.Array) -> jax.Array:
        return self.augment(images, key)

    def _count(self, indices: Any) -> int:
        return len(indices)

    def finish(self) -> Variables:
        """The final model variables (the plan's `finish`, or parameters and BatchNorm statistics)."""
        return self.plan.finish(self.state) if self.plan.finish else variables_of(self.state)

    # -- the phase loop -----------------------------------------------------------------------------------

    def _batches(self, phase: Phase, phase_index: int, start: int) -> tuple[Iterator[dict], int]:
        """The phase's batch stream from step `start`, and its total number of steps."""
        bs = self.plan.batch_size
        streams = phase.indices if isinstance(phase.indices, Mapping) else {"": phase.indices}
        total = max(num_batches(self._count(v), bs) for v in streams.values())
        seed = (stage_salt(f"{self.name}/{phase.name}"), self.epoch) if phase.shuffle else None

        def stream(indices: Any, salt: int) -> Iterator[dict]:
            n = num_batches(self._count(indices), bs)
            cycle, offset = divmod(start, max(n, 1))
            done = start
            while done < total:
                s = None if seed is None else (*seed, salt, cycle)
                with self._open(indices, s, phase.extra, offset) as it:
                    for b in it:
                        if done >= total:
                            return
                        yield b
                        done += 1
                cycle, offset = cycle + 1, 0

        if not isinstance(phase.indices, Mapping):
            return stream(phase.indices, 0), total

        def zipped() -> Iterator[dict]:
            gens = {k: stream(v, stage_salt(k)) for k, v in streams.items()}
            try:
                for parts in zip(*gens.values()):
                    yield dict(zip(gens, parts))
            finally:
                for g in gens.values():
                    g.close()

        return zipped(), total

    def run_phase(self, index: int, phase: Phase) -> tuple[dict[str, float], int]:
        """Runs one phase from where the position says; returns its mean metrics and the images it saw."""
        ctx = self.ctx
        start, collected = 0, []
        if self.resume_at[0] == index and self.resume_at[1]:
            start, partial = self.resume_at[1], self.resume_at[2]
            collected = [dict(zip(partial, vals)) for vals in zip(*partial.values())] if partial else []
        self.resume_at = (-1, 0, {})
        step = self._jitted(step_id(phase.step), lambda: self._compile(phase.step))
        key = self._fold(self._fold(self.key, self.epoch), index)
        batches, total = self._batches(phase, index, start)
        pending: dict | None = None
        last_log, images, seen = time.perf_counter(), 0, 0
        rows = self.plan.batch_size * self.members * (len(phase.indices) if isinstance(phase.indices, Mapping) else 1)
        try:
            for i, batch in enumerate(batches, start=start):
                args = (*phase.args, self._fold(key, i)) if phase.keyed else phase.args
                if self.augment is not None:
                    batch = _augment_batch(self._augment, batch, self._fold(self._fold(key, i), AUGMENT_SALT),
                                           self._fold)
                self.state, m = step(self.state, batch, *args)
                self.state = self._after_step(self.state)
                if pending is not None:
                    self._check(pending, i - 1)
                pending = m
                collected.append(m)
                images += rows
                seen += rows
                if time.perf_counter() - last_log > LOG_EVERY_S:
                    rate = images / (time.perf_counter() - last_log)
                    ctx.log(f"[{self.name}] epoch {self.epoch + 1} {phase.name} step {i + 1}/{total}  {rate:.0f} img/s")
                    last_log, images = time.perf_counter(), 0
                if ctx.stop.is_set():
                    self._check(m, i)
                    host = jax.device_get(collected)
                    partial = {k: [np.asarray(x[k]).tolist() for x in host] for k in (host[0] if host else {})}
                    self.save(index, i + 1, partial)
                    raise Interrupted(f"{self.name}: stopped in epoch {self.epoch + 1} after step {i + 1}; "
                                      f"checkpoint saved in {self.ckpts.directory}")
        finally:
            batches.close()
        if pending is not None:
            self._check(pending, len(collected) - 1)
        host = jax.device_get(collected)
        return {k: _mean([x[k] for x in host]) for k in (host[0] if host else {})}, seen

    def _check(self, metrics: dict, i: int) -> None:
        for k, v in jax.device_get(metrics).items():
            if not np.all(np.isfinite(v)):
                raise NonFiniteError(f"{self.name}: {k} is {np.asarray(v).tolist()} at epoch {self.epoch + 1}, "
                                     f"step {i + 1}; the last good checkpoint is kept (lower the learning rate?)")


def _mean(values: Sequence[Any]) -> float | list[float]:
    """Mean over steps of a metric: a float, or one per member for a population."""
    m = np.mean(np.asarray(values, np.float64), axis=0)
    return float(m) if m.ndim == 0 else m.tolist()


def _augment_batch(augment: Callable, batch: dict, key: jax.Array, fold: Callable) -> dict:
    """`augment` applied to the images of a batch, or of each stream of a paired batch."""
    if "image" in batch:
        return {**batch, "image": augment(batch["image"], key)}
    return {k: _augment_batch(augment, b, fold(key, stage_salt(k)), fold) for k, b in batch.items()}


def run(ctx: Context, name: str, make_plan: Callable[[], Plan], settings: Any, key: jax.Array,
        augment: bool = False) -> MethodResult:
    """Builds the plan (its set-up is timed), restores the newest checkpoint of stage `name`, runs the epochs
    and returns the final variables with the time, history and the plan's extras. With `augment`, every
    training batch goes through the data's training augmentation first (`Preprocess.augment_images`).
    Compiled steps are kept in `ctx.compiled`, so runs of the same step compile it once."""
    started = time.perf_counter()
    plan = make_plan()
    check_batch_size(plan.batch_size, ctx.mesh)
    directory = None if ctx.progress_dir is None else Path(ctx.progress_dir) / name
    ckpts = StageCheckpoints(name, directory, settings_json(settings), ctx.log)
    try:
        stage = _Stage(ctx, name, plan, ckpts, key, started, augment)
        if plan.summary and stage.epoch == 0:
            ctx.log(f"[{name}] {plan.summary}")
        stage.run()
        variables = stage.finish()
        variables = jax.block_until_ready(variables)
        return MethodResult(variables=variables, time_s=stage.elapsed(), history=stage.history, extra=plan.extra)
    finally:
        ckpts.close()
