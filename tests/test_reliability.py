"""Faults and bad input: kill -9 and SIGTERM in the middle of unlearning then resume exactly; a damaged
latest checkpoint falls back to the previous one; a NaN stops a stage and keeps the last good checkpoint;
the same seed gives bit-identical results; bad input is refused with one line before any work starts.

The cases and their outcomes are listed in the README's reliability section.
"""

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import chex
import jax
import numpy as np
import pytest

from lotus_jax import checkpoint
from lotus_jax.train import runner
from lotus_jax.train.resume import StageCheckpoints
from lotus_jax.train.runner import Interrupted, NonFiniteError
from tests.train.toy import StopAfter, regression_plan, regression_state, toy_context

ROOT = Path(__file__).resolve().parents[1]
TINY = '''
from configs.default import get_config as default


def get_config(variant=""):
    c = default()
    c.model.name = "vit"  # a one-layer ViT compiles in a few seconds on CPU; the loop does not care
    c.model.variant = "Ti/4"
    c.model.num_layers, c.model.hidden_size, c.model.num_heads, c.model.mlp_dim = 1, 32, 2, 64
    c.train.epochs = c.retrain.epochs = 2
    c.mesh.data = 1  # one of the test session's 8 fake devices
    c.checkpoint_every_s = 0  # a checkpoint after every epoch: a kill mid-run resumes from one
    c.methods = "lotus"
    c.lotus.epochs = 6
    c.lotus.batch_size = 8
    c.lotus.stop_threshold = None
    return c
'''


# -- the runner on a toy problem ------------------------------------------------------------------------

def _toy_run(directory, epochs=3, stop_after=None, poison=None, log=lambda s: None):
    """Runs the toy regression stage (6 batches per epoch) through `runner.run` with checkpoints in
    `directory`; `stop_after=k` sets the stop flag when the k-th batch of the stage is taken, `poison={epoch:
    step}` puts a NaN in that step's target. Returns the MethodResult (variables: params, opt_state, step)."""
    if stop_after is None:
        ctx = toy_context(progress_dir=directory, log=log)
    else:
        ctx = toy_context(progress_dir=directory, log=log, cls=StopAfter, after=stop_after)
    plan = regression_plan(epochs, poison=poison, shuffle=poison is None)
    return runner.run(ctx, "toy", lambda: plan, {"epochs": epochs}, jax.random.key(0))


def _without_time(history):
    return [{k: v for k, v in h.items() if k != "seconds"} for h in history]


def test_stop_mid_epoch_then_resume_equals_uninterrupted(tmp_path):
    ref = _toy_run(None)
    with pytest.raises(Interrupted, match="stopped in epoch 2 after step 2"):
        _toy_run(tmp_path / "a", stop_after=8)  # batch 8 of the stage = epoch 2, step 2
    logs = []
    res = _toy_run(tmp_path / "a", log=logs.append)
    assert any("resuming: epoch 2" in line for line in logs), logs
    chex.assert_trees_all_equal(jax.device_get(res.variables), jax.device_get(ref.variables))
    assert int(res.variables["step"]) == 18
    # Epoch means include the steps before the stop.
    assert _without_time(res.history) == _without_time(ref.history)


def test_damaged_latest_checkpoint_falls_back_to_the_previous(tmp_path):
    ref = _toy_run(None, epochs=2)
    _toy_run(tmp_path / "a", epochs=2)
    steps = sorted(int(p.name) for p in (tmp_path / "a" / "toy").iterdir() if p.name.isdigit())
    assert len(steps) == 2  # after epoch 1 and after epoch 2
    latest = tmp_path / "a" / "toy" / str(steps[-1])
    for f in latest.rglob("*"):  # simulate a write cut short: the data files are gone
        if f.is_file() and "METADATA" not in f.name:
            f.unlink()
    logs = []
    res = _toy_run(tmp_path / "a", epochs=2, log=logs.append)
    assert any("unreadable" in line for line in logs) and any("resuming: epoch 2" in line for line in logs), logs
    # Epoch 2 was run again from the checkpoint of epoch 1, to the same result.
    chex.assert_trees_all_equal(jax.device_get(res.variables), jax.device_get(ref.variables))
    assert _without_time(res.history) == _without_time(ref.history)


def test_epoch_checkpoints_at_most_every_checkpoint_every_s_but_always_the_last(tmp_path):
    # Catches an interval that is ignored (a checkpoint per epoch), one that also skips the last epoch (a rerun
    # would train the finished stage again), and a resume that is not exact from the last epoch saved.
    ref = _toy_run(None, epochs=3)
    ctx = toy_context(progress_dir=tmp_path, checkpoint_every_s=1e9)
    res = runner.run(ctx, "toy", lambda: regression_plan(3), {"epochs": 3}, jax.random.key(0))
    chex.assert_trees_all_equal(jax.device_get(res.variables), jax.device_get(ref.variables))
    assert sorted(p.name for p in (tmp_path / "toy").iterdir() if p.name.isdigit()) == ["0"]  # epoch 3 only
    logs = []
    again = runner.run(toy_context(progress_dir=tmp_path, checkpoint_every_s=1e9, log=logs.append), "toy",
                       lambda: regression_plan(3), {"epochs": 3}, jax.random.key(0))
    assert any("resuming: epoch 4" in line for line in logs), logs  # nothing left to train
    chex.assert_trees_all_equal(jax.device_get(again.variables), jax.device_get(ref.variables))


def test_nan_stops_the_stage_and_keeps_the_last_good_checkpoint(tmp_path):
    with pytest.raises(NonFiniteError, match="loss is nan at epoch 2, step 4"):
        _toy_run(tmp_path / "a", poison={1: 4})
    ckpts = StageCheckpoints("toy", tmp_path / "a" / "toy", {"epochs": 3}, lambda s: None)
    try:
        state, position = ckpts.restore(regression_state())
    finally:
        ckpts.close()
    assert position["epoch"] == 1 and int(state.step) == 6
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state.params))


# -- the whole program --------------------------------------------------------------------------------

def _cmd(config, workdir, *extra):
    return [sys.executable, "-m", "lotus_jax.main", f"--config={config}", f"--workdir={workdir}", *extra]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(config path, workdir holding the original model, reference workdir unlearned without interruption)."""
    base = tmp_path_factory.mktemp("rel")
    config = base / "tiny.py"
    config.write_text(TINY)
    trained = base / "trained"
    r = subprocess.run(_cmd(config, trained, "--config.stages=train"), capture_output=True, text=True,
                       cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stderr
    ref = base / "ref"
    shutil.copytree(trained, ref)
    r = subprocess.run(_cmd(config, ref, "--config.stages=unlearn,evaluate"), capture_output=True, text=True,
                       cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stderr
    return config, trained, ref


def _params(workdir):
    return checkpoint.ocp.StandardCheckpointer().restore((workdir / "checkpoints" / "lotus").absolute())


def _metrics_without_time(workdir):
    m = json.loads((workdir / "metrics.json").read_text())
    for model in m["models"].values():
        model.pop("time_s", None)
    return m


def _interrupt_and_resume(config, trained, tmp_path, sig):
    work = tmp_path / "w"
    shutil.copytree(trained, work)
    cmd = _cmd(config, work, "--config.stages=unlearn,evaluate")
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    progress = work / "progress" / "lotus"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if progress.exists() and any(p.name.isdigit() for p in progress.iterdir()):
            break  # one epoch is checkpointed: the run is now inside a later epoch
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=300)
    resumed = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    return proc.returncode, err, resumed.stdout, work


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_interrupted_unlearning_resumes_to_the_same_result(trained, tmp_path, sig):
    config, trained_dir, ref = trained
    code, err, resumed_out, work = _interrupt_and_resume(config, trained_dir, tmp_path, sig)
    if sig == signal.SIGKILL:
        assert code == -signal.SIGKILL
    else:
        assert code == 130 and "Run the same command again to resume" in err
    assert "[lotus] resuming: epoch" in resumed_out
    chex.assert_trees_all_equal(_params(work), _params(ref))
    assert _metrics_without_time(work) == _metrics_without_time(ref)
    assert not (work / "progress" / "lotus").exists()  # cleaned up once the stage finished


def test_same_seed_twice_is_bit_identical(trained, tmp_path):
    """(Another seed gives another forget set and other Gumbel draws: tests/data/test_splits.py and
    tests/methods/test_lotus.py::test_driver_is_deterministic.)"""
    config, trained_dir, ref = trained
    again = tmp_path / "again"
    shutil.copytree(trained_dir, again)
    r = subprocess.run(_cmd(config, again, "--config.stages=unlearn,evaluate"), cwd=ROOT, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    chex.assert_trees_all_equal(_params(again), _params(ref))
    assert _metrics_without_time(again) == _metrics_without_time(ref)


@pytest.mark.parametrize("extra,message", [
    (["--config.data.forget.mode=ids", "--config.data.forget.ids_file={ids}"], "out of range; valid ids are 0..1257"),
    (["--config.data.forget.mode=class", "--config.data.forget.classes=12"], "do not exist"),
    (["--config.mesh.data=-1", "--config.lotus.batch_size=12"], "not a positive multiple of the 8 data-parallel devices"),
    (["--config.stages=unlearn", "--config.original_checkpoint={ckpt}", "--config.model.hidden_size=48"],
     "expects"),
])
def test_bad_input_before_any_work(trained, tmp_path, extra, message):
    config, trained_dir, _ = trained
    (tmp_path / "ids.txt").write_text("1 2 99999\n")
    extra = [e.format(ids=tmp_path / "ids.txt", ckpt=trained_dir / "checkpoints" / "original") for e in extra]
    r = subprocess.run(_cmd(config, tmp_path / "w", *extra), cwd=ROOT, capture_output=True, text=True, timeout=300)
    err = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 1 and len(err) == 1 and message in err[0], r.stderr
    assert not (tmp_path / "w" / "checkpoints").exists()
