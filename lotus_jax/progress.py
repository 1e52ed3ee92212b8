"""Preemption-safe epoch loops: checkpoints at the end of every epoch and on a stop request, exact resume,
and guards against non-finite losses.

A driver walks its epochs with a `Cursor`:

    cursor = ctx.cursor("finetune")
    state = cursor.restore(state)                    # continue from the newest good checkpoint, if any
    for epoch in cursor.epochs(cfg.epochs):
        state, m = cursor.run_phase(step, state, batches(epoch))   # one pass over a batch stream
        cursor.end_epoch(state, {"loss": m["loss"]})                # history + checkpoint

An epoch may have several phases (e.g. a forget pass then a retain pass). Everything else a run depends on
is a pure function of (seed, epoch, step): the data order, the PRNG keys (`key=` folds in the step index).
So a checkpoint holds the train state (parameters, BatchNorm statistics, optimizer state, step), the position
(epoch, phase, steps done), the metrics gathered so far in the epoch, per-epoch values the driver stored in
`epoch_info` (LoTUS's accuracy and temperature), the history and the time spent. Orbax writes each
checkpoint atomically; one that cannot be read (say, a partial write) is skipped for the one before it.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp


class Interrupted(Exception):
    """A stop was requested (SIGINT/SIGTERM); the current step finished and a checkpoint was written."""


class NonFiniteError(ArithmeticError):
    """A loss or gradient norm became NaN/inf; nothing after the last good checkpoint was saved."""


def _state_tree(state: Any) -> dict[str, Any]:
    """What a checkpoint stores of a train state (a frozen teacher, say, is rebuilt, not stored)."""
    tree = {"params": state.params, "batch_stats": state.batch_stats, "opt_state": state.opt_state,
            "step": state.step}
    return jax.tree.map(jnp.asarray, tree)


class Cursor:
    """Position of one stage in its epochs, with checkpoints in `directory` (None: no checkpoints)."""

    def __init__(self, name: str, directory: Path | None, stop: threading.Event | None = None,
                 log: Callable[[str], None] = print, keep: int = 2, log_every_s: float = 60.0,
                 settings: Any = None) -> None:
        self.name, self.directory, self.log, self.log_every_s = name, directory, log, log_every_s
        self.settings = settings  # JSON-able; a checkpoint made with other settings is not resumed
        self.stop = stop or threading.Event()
        self.keep = keep
        self.epoch = self._first_epoch = 0
        self.history: list[dict] = []
        self.epoch_info: dict[str, Any] | None = None
        self._phase = 0
        self._phase_results: list[dict[str, float]] = []
        self._resume: tuple[int, int, dict[str, list[float]]] | None = None  # (phase, steps done, metrics)
        self._elapsed_before = 0.0
        self._start = time.perf_counter()
        self._saving_s = 0.0  # checkpoint writes are not part of the method's time
        self._manager: ocp.CheckpointManager | None = None

    # -- checkpoints -------------------------------------------------------------------------------

    def _mngr(self) -> ocp.CheckpointManager | None:
        if self.directory is None:
            return None
        if self._manager is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._manager = ocp.CheckpointManager(
                self.directory.absolute(),
                # Synchronous: the step waits for each write anyway, and no writer threads outlive the stage.
                options=ocp.CheckpointManagerOptions(max_to_keep=self.keep, create=True,
                                                     enable_async_checkpointing=False))
        return self._manager

    def restore(self, state: Any) -> Any:
        """The state of the newest readable checkpoint (position and history restored too), else `state`."""
        mngr = self._mngr()
        if mngr is None:
            return state
        target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                              _state_tree(state))
        for step in sorted(mngr.all_steps(), reverse=True):
            try:
                out = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target),
                                                                  meta=ocp.args.JsonRestore()))
            except Exception as e:  # a partially written or damaged checkpoint: fall back to the one before
                self.log(f"[{self.name}] checkpoint {step} in {self.directory} is unreadable "
                         f"({type(e).__name__}); trying the previous one")
                continue
            meta = out["meta"]
            if meta.get("settings") != self.settings:
                self.log(f"[{self.name}] checkpoints in {self.directory} were made with other settings: "
                         f"starting the stage afresh")
                return state
            self.epoch, self.history = meta["epoch"], meta["history"]
            self._first_epoch = self.epoch
            self.epoch_info, self._phase_results = meta["epoch_info"], meta["phase_results"]
            self._elapsed_before = meta["elapsed_s"]
            self._start, self._saving_s = time.perf_counter(), 0.0  # set-up before the restore was counted
            if meta["steps_done"] or meta["partial"]:
                self._resume = (meta["phase"], meta["steps_done"], meta["partial"])
            self.log(f"[{self.name}] resuming from checkpoint {step}: epoch {self.epoch + 1}, "
                     f"{len(self._phase_results)} phase(s) and {meta['steps_done']} step(s) of it done")
            return state.replace(**out["state"])
        return state

    def _save(self, state: Any, phase: int, steps_done: int, partial: dict[str, list[float]]) -> None:
        mngr = self._mngr()
        if mngr is None:
            return
        t = time.perf_counter()
        meta = {"settings": self.settings, "epoch": self.epoch, "phase": phase, "steps_done": steps_done,
                "partial": partial,
                "phase_results": self._phase_results, "epoch_info": self.epoch_info, "history": self.history,
                "elapsed_s": self.elapsed()}
        latest = mngr.latest_step()
        mngr.save(0 if latest is None else latest + 1,
                  args=ocp.args.Composite(state=ocp.args.StandardSave(_state_tree(state)),
                                          meta=ocp.args.JsonSave(meta)))
        mngr.wait_until_finished()
        self._saving_s += time.perf_counter() - t

    # -- the loop ----------------------------------------------------------------------------------

    def elapsed(self) -> float:
        """Seconds spent in this stage, over every session that worked on it."""
        return self._elapsed_before + time.perf_counter() - self._start - self._saving_s

    def eta(self, n: int) -> float:
        """Seconds left for epochs up to `n`, at this session's pace so far."""
        done = self.epoch - self._first_epoch
        return (time.perf_counter() - self._start) / max(done, 1) * max(n - self.epoch, 0)

    def epochs(self, n: int) -> Iterator[int]:
        """Epoch indices from where the stage stands to `n` (exclusive)."""
        try:
            while self.epoch < n:
                self._phase = 0
                yield self.epoch
        finally:  # also when the driver breaks out early
            self.close()

    def close(self) -> None:
        """Releases the checkpoint manager (its files stay)."""
        if self._manager is not None:
            self._manager.close()
            self._manager = None

    def run_phase(self, step: Callable, state: Any, batches: Iterable[dict], *args: Any,
                  key: jax.Array | None = None) -> tuple[Any, dict[str, float]]:
        """Applies `step(state, batch, *args[, fold_in(key, i)])` to every batch; returns the mean metrics.

        Skips what a restored checkpoint already did. After each step: a stop request saves a checkpoint
        and raises `Interrupted`; a non-finite metric of the previous step raises `NonFiniteError` (the
        check lags one step so the host never waits for the device in between).
        """
        phase = self._phase
        self._phase += 1
        if phase < len(self._phase_results):
            return state, self._phase_results[phase]
        done, collected = 0, []
        if self._resume is not None and self._resume[0] == phase:
            done, partial = self._resume[1], self._resume[2]
            collected = [dict(zip(partial, vals)) for vals in zip(*partial.values())] if partial else []
            self._resume = None
        pending: dict | None = None
        last_log, images = time.perf_counter(), 0
        rows = lambda b: sum(x.shape[0] for x in jax.tree.leaves(b) if getattr(x, "ndim", 0) == 4)  # noqa: E731
        for i, batch in enumerate(batches):
            if i < done:
                continue
            step_args = args if key is None else (*args, jax.random.fold_in(key, i))
            state, m = step(state, batch, *step_args)
            if pending is not None:
                self._check(pending, i - 1)
            pending = m
            collected.append(m)
            images += rows(batch)
            if time.perf_counter() - last_log > self.log_every_s:
                rate = images / (time.perf_counter() - last_log)
                self.log(f"[{self.name}] epoch {self.epoch + 1} step {i + 1}  {rate:.0f} img/s")
                last_log, images = time.perf_counter(), 0
            if self.stop.is_set():
                self._check(m, i)
                host = jax.device_get(collected)
                partial = {k: [float(x[k]) for x in host] for k in (host[0] if host else {})}
                self._save(state, phase, i + 1, partial)
                raise Interrupted(f"{self.name}: stopped in epoch {self.epoch + 1} after step {i + 1}; "
                                  f"checkpoint saved in {self.directory}")
        if pending is not None:
            self._check(pending, len(collected) - 1)
        host = jax.device_get(collected)
        result = {k: float(np.mean([float(x[k]) for x in host])) for k in (host[0] if host else {})}
        self._phase_results.append(result)
        return state, result

    def _check(self, metrics: dict, i: int) -> None:
        for k, v in jax.device_get(metrics).items():
            if not math.isfinite(float(v)):
                raise NonFiniteError(f"{self.name}: {k} is {float(v)} at epoch {self.epoch + 1}, step {i + 1}; "
                                     f"the last good checkpoint is kept (lower the learning rate?)")

    def end_epoch(self, state: Any, record: dict[str, Any]) -> None:
        """Records the epoch in the history, moves to the next epoch and writes a checkpoint."""
        self.history.append({"epoch": self.epoch + 1, **record})
        self.epoch += 1
        self.epoch_info, self._phase_results = None, []
        self._save(state, 0, 0, {})
        if self.stop.is_set():
            raise Interrupted(f"{self.name}: stopped after epoch {self.epoch}; checkpoint saved in {self.directory}")
