"""The epoch loop (`train.runner`) on toy stages: a method that fails mid-epoch stops every thread it
started and, inside `main.run`, leaves the other methods running; epoch records prefix a metric that
several phases report; keyed phases get a distinct, reproducible key per step; paired phases cycle the
shorter stream. (Stop/resume, damaged checkpoints and NaN guards: tests/test_reliability.py.)"""

from __future__ import annotations

import dataclasses
import json
import threading
import types

import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np
import pytest
from jax.experimental import io_callback

from lotus_jax import main
from lotus_jax.data.sources import ArraySource
from lotus_jax.train import runner
from lotus_jax.train.runner import Phase, Plan
from tests.test_main import tiny_config
from tests.train.toy import Recorder, counting_state, recorded, recording_step, toy_context, toy_source

KEY = jax.random.key(0)


def run(ctx, plan: Plan, name: str = "toy", key=KEY) -> runner.MethodResult:
    return runner.run(ctx, name, lambda: plan, {"toy": 1}, key)


def single(step, indices, **kw) -> Plan:
    """One epoch of one phase, batch 8, unshuffled."""
    return Plan(state=counting_state(), batch_size=8, epochs=1, finish=lambda s: s,
                phases=lambda epoch, info: [Phase("only", step, indices, shuffle=False, **kw)])


# -- failures mid-epoch ---------------------------------------------------------------------------------------

class Exploded(RuntimeError):
    pass


def exploding_step(at: int):
    """A step that raises `Exploded` from a host callback in its `at`-th call (1-based)."""

    def boom(count):
        if int(count) + 1 == at:
            raise Exploded(f"the step exploded in call {at}")

    def step(state, batch):
        io_callback(boom, None, state["count"], ordered=True)
        return {"count": state["count"] + 1}, {"loss": jnp.float32(0.0)}

    return step


@dataclasses.dataclass(frozen=True)
class FailingArraySource(ArraySource):
    """An in-memory source whose example `fail_at` cannot be read (a disk error, not a damaged image)."""

    fail_at: int = -1

    def get(self, indices: np.ndarray) -> np.ndarray:
        if self.fail_at in np.asarray(indices):
            raise OSError(f"read of example {self.fail_at} failed")
        return super().get(indices)

    def get_one(self, index: int) -> np.ndarray:
        if index == self.fail_at:
            raise OSError(f"read of example {index} failed")
        return super().get_one(index)


class FailingLazySource:
    """The same, as a source that is not held in memory (read example by example on the loader's threads)."""

    def __init__(self, base: ArraySource, fail_at: int) -> None:
        self.base, self.fail_at = base, fail_at
        self.labels, self.class_names, self.image_shape = base.labels, base.class_names, base.image_shape

    def __len__(self) -> int:
        return len(self.base)

    def get(self, indices: np.ndarray) -> np.ndarray:
        return np.stack([self.get_one(int(i)) for i in np.asarray(indices)])

    def get_one(self, index: int) -> np.ndarray:
        if index == self.fail_at:
            raise OSError(f"read of example {index} failed")
        return self.base.get_one(index)

    def describe(self, index: int) -> str:
        return f"example {index}"


def failing_source(kind: str, n: int, fail_at: int):
    base = toy_source(n)
    if kind == "memory":
        return FailingArraySource(base.images, base.labels, base.class_names, fail_at=fail_at)
    return FailingLazySource(base, fail_at)


def new_threads(before: set[threading.Thread]) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t not in before and t.is_alive()]


@pytest.mark.parametrize("paired", [False, True], ids=["single", "paired"])
@pytest.mark.parametrize("failure", ["step", "memory-read", "lazy-read"])
def test_a_stage_failing_mid_epoch_leaves_no_thread_behind(failure, paired, tmp_path):
    source = failing_source(failure.split("-")[0], 48, fail_at=20)  # in the 3rd batch of 8
    ctx = toy_context(source, progress_dir=tmp_path)
    rec = Recorder()
    indices = np.arange(48)
    streams = {"a": indices, "b": indices[:16]} if paired else indices
    # A first, good stage starts whatever is started once per process (orbax, grain pools).
    run(ctx, single(recording_step(rec), np.arange(16)), name="warm-up")
    before = set(threading.enumerate())
    if failure == "step":
        plan, error = single(exploding_step(at=3), streams), Exploded
    else:
        plan, error = single(recording_step(Recorder()), streams), OSError
    with pytest.raises(Exception) as info:
        run(ctx, plan)
    assert isinstance(info.value, error) or "exploded in call 3" in str(info.value) or \
        "example 20" in str(info.value), repr(info.value)
    leaked = new_threads(before)
    assert not leaked, f"threads still alive after the failed stage: {[t.name for t in leaked]}"


@pytest.mark.parametrize("kind", ["memory", "lazy"])
def test_a_source_failing_after_the_second_batch_stops_the_stage_there(kind):
    ctx = toy_context(failing_source(kind, 48, fail_at=16))  # first row of batch 3
    rec = Recorder()
    with pytest.raises(OSError, match="read of example 16 failed"):
        run(ctx, single(recording_step(rec), np.arange(48)))
    seen = recorded(rec)
    assert len(seen) == 2
    np.testing.assert_array_equal(np.concatenate(seen), np.arange(16))


def exploding_method(at: int = 2) -> types.SimpleNamespace:
    """A throwaway method whose step raises from a host callback in its `at`-th step."""

    def plan(ctx, original, cfg, key):
        return Plan(state=counting_state(), batch_size=int(cfg.batch_size), epochs=int(cfg.epochs),
                    phases=lambda epoch, info: [Phase("boom", exploding_step(at), ctx.splits.retain)],
                    finish=lambda state: original)

    return types.SimpleNamespace(default_config=lambda: mlc.ConfigDict(dict(epochs=1, batch_size=64)), plan=plan)


def test_in_main_a_method_failing_mid_epoch_is_recorded_and_the_others_still_run(tmp_path, register_method):
    exploding = register_method("exploding", exploding_method())
    cfg = tiny_config()
    with cfg.unlocked():
        cfg.exploding = exploding.default_config()
    cfg.stages = "train,unlearn"
    cfg.mesh.data = 1  # one of the test session's 8 fake devices
    cfg.train.epochs = 1
    cfg.methods = "exploding,finetune"
    cfg.finetune.epochs, cfg.finetune.batch_size = 1, 64
    before = set(threading.enumerate())
    main.run(cfg, tmp_path)
    failed = json.loads((tmp_path / "results" / "exploding.json").read_text())["failed"]
    # The reason names the error (raised in a host callback, it reaches Python as a JaxRuntimeError).
    assert failed.split(":")[0] in ("Exploded", "JaxRuntimeError"), failed
    finetune = json.loads((tmp_path / "results" / "finetune.json").read_text())
    assert "failed" not in finetune and finetune["time_s"] > 0 and len(finetune["history"]) == 1
    assert (tmp_path / "checkpoints" / "finetune").exists()
    assert not (tmp_path / "checkpoints" / "exploding").exists()
    assert (tmp_path / "progress" / "exploding").exists()  # a failed method keeps its epoch checkpoints
    assert not (tmp_path / "progress" / "finetune").exists()
    loaders = [t for t in new_threads(before) if "grain" in t.name.lower() or "loader" in t.name.lower()]
    assert not loaders, [t.name for t in loaders]


# -- epoch records ------------------------------------------------------------------------------------------

def test_a_metric_reported_by_two_phases_gets_the_phase_prefix():
    ctx = toy_context(toy_source(40))
    a, b = Recorder(), Recorder()
    plan = Plan(state=counting_state(), batch_size=8, epochs=2, finish=lambda s: s, phases=lambda epoch, info: [
        Phase("forget", recording_step(a, metrics=("loss", "acc")), np.arange(8)),  # 1 full batch
        Phase("retain", recording_step(b, metrics=("loss", "ce")), np.arange(8, 20)),  # 8 + 4 rows
    ])
    res = run(ctx, plan)
    assert len(res.history) == 2
    for epoch, h in enumerate(res.history, start=1):
        assert set(h) == {"epoch", "forget_loss", "retain_loss", "acc", "ce", "seconds"}, h
        assert h["epoch"] == epoch
        assert h["forget_loss"] == h["acc"] == 8.0  # the mean over the phase's steps
        assert h["retain_loss"] == h["ce"] == 6.0
    assert int(res.variables["count"]) == 2 * (1 + 2)


# -- keys and streams -----------------------------------------------------------------------------------------

def _keys(key, epochs=2):
    ctx = toy_context(toy_source(24))
    rec = Recorder()
    step = recording_step(rec, keyed=True)
    plan = Plan(state=counting_state(), batch_size=8, epochs=epochs, finish=lambda s: s,
                phases=lambda epoch, info: [Phase("a", step, np.arange(24), keyed=True),
                                            Phase("b", step, np.arange(16), keyed=True)])
    run(ctx, plan, key=key)
    jax.effects_barrier()
    return [tuple(np.asarray(s["key"]).ravel()) for s in rec.steps]


def test_keyed_phases_get_a_distinct_key_per_step_and_the_same_keys_on_rerun():
    keys = _keys(KEY)
    assert len(keys) == 2 * (3 + 2)
    assert len(set(keys)) == len(keys), "two steps (of one phase, two phases or two epochs) got the same key"
    assert _keys(KEY) == keys
    other = _keys(jax.random.key(1))
    assert not set(other) & set(keys)


def test_paired_phases_cycle_the_shorter_stream():
    n_retain, n_forget, bs = 50, 12, 8
    ctx = toy_context(toy_source(n_retain + n_forget))
    retain, forget = np.arange(n_retain), np.arange(n_retain, n_retain + n_forget)

    def pairs(first, second):
        rec = Recorder()
        step = recording_step(rec)
        plan = Plan(state=counting_state(), batch_size=bs, epochs=1, finish=lambda s: s,
                    phases=lambda epoch, info: [Phase("pairs", step, {"retain": first, "forget": second})])
        res = run(ctx, plan)
        return recorded(rec, "retain"), recorded(rec, "forget"), res

    seen_r, seen_f, res = pairs(retain, forget)
    assert len(seen_r) == len(seen_f) == 7  # ceil(50 / 8) retain batches; the 2-batch forget set cycles
    assert int(res.variables["count"]) == 7
    np.testing.assert_array_equal(np.sort(np.concatenate(seen_r)), retain)  # the longer stream: once
    flat_f = np.concatenate(seen_f)
    counts = np.bincount(flat_f - n_retain, minlength=n_forget)
    assert counts.min() >= 3 and counts.max() <= 4  # 3.5 passes over the forget set
    cycles = [flat_f[i * n_forget:(i + 1) * n_forget] for i in range(3)]
    for c in cycles:  # each complete pass holds every forget example once ...
        np.testing.assert_array_equal(np.sort(c), forget)
    assert len({tuple(c) for c in cycles}) == 3  # ... reshuffled on each cycle
    # Either stream may be the shorter one.
    seen_f2, seen_r2, _ = pairs(forget, retain)
    assert len(seen_f2) == len(seen_r2) == 7
    np.testing.assert_array_equal(np.sort(np.concatenate(seen_r2)), retain)
