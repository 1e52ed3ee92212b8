"""Stage checkpoints for exact resume: the state and the position (epoch, phase, batches done, metrics so
far, per-epoch info, history, time spent), written atomically by orbax; an unreadable one is skipped for the
one before it, and one made with other settings is ignored."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp


def _leaves(state: Any) -> dict[str, Any]:
    """The state's leaves by position, as arrays: any pytree (a train state, a dict of accumulators, plain
    Python numbers such as `TrainState.create`'s step) round-trips."""
    return {str(i): jnp.asarray(leaf) for i, leaf in enumerate(jax.tree.leaves(state))}


class StageCheckpoints:
    """The newest `keep` checkpoints of one stage in `directory` (None: nothing is written or read)."""

    def __init__(self, name: str, directory: Path | None, settings: Any, log: Callable[[str], None],
                 keep: int = 2) -> None:
        self.name, self.directory, self.settings, self.log, self.keep = name, directory, settings, log, keep
        self.saving_s = 0.0  # time spent writing: not part of a method's time
        self._manager: ocp.CheckpointManager | None = None

    def _mngr(self) -> ocp.CheckpointManager | None:
        if self.directory is None:
            return None
        if self._manager is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._manager = ocp.CheckpointManager(
                self.directory.absolute(),
                # Synchronous: the loop waits for each write anyway, and no writer thread outlives the stage.
                options=ocp.CheckpointManagerOptions(max_to_keep=self.keep, create=True,
                                                     enable_async_checkpointing=False))
        return self._manager

    def restore(self, state: Any) -> tuple[Any, dict | None]:
        """(state, position) of the newest readable checkpoint with these settings, else (state, None)."""
        mngr = self._mngr()
        if mngr is None:
            return state, None
        leaves, treedef = jax.tree.flatten(state)
        target = {k: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding) for k, x in _leaves(state).items()}
        for step in sorted(mngr.all_steps(), reverse=True):
            try:
                out = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target),
                                                                  meta=ocp.args.JsonRestore()))
            except Exception as e:  # a partially written or damaged checkpoint: fall back to the one before
                self.log(f"[{self.name}] checkpoint {step} in {self.directory} is unreadable "
                         f"({type(e).__name__}); trying the previous one")
                continue
            if out["meta"].get("settings") != self.settings:
                self.log(f"[{self.name}] checkpoints in {self.directory} were made with other settings: "
                         f"starting the stage afresh")
                return state, None
            restored = jax.tree.unflatten(treedef, [out["state"][str(i)] for i in range(len(leaves))])
            return restored, out["meta"]
        return state, None

    def save(self, state: Any, position: dict) -> None:
        mngr = self._mngr()
        if mngr is None:
            return
        t = time.perf_counter()
        latest = mngr.latest_step()
        mngr.save(0 if latest is None else latest + 1,
                  args=ocp.args.Composite(state=ocp.args.StandardSave(_leaves(state)),
                                          meta=ocp.args.JsonSave({"settings": self.settings, **position})))
        mngr.wait_until_finished()
        self.saving_s += time.perf_counter() - t

    def close(self) -> None:
        """Releases the checkpoint manager (its files stay)."""
        if self._manager is not None:
            self._manager.close()
            self._manager = None
