"""Multi-process run: two CPU processes (2 devices each) joined by `jax.distributed.initialize` run LoTUS
(two epochs) and the evaluation on a ('data', 'fsdp') = (2, 2) mesh, and an evaluation with `fsdp` across
the processes (1, 4), each reading only its rows of every batch, and get the single-process result.

The same file is the worker: `python -m tests.test_multihost <process_id> <port> <dir>`.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

NUM_PROCESSES = 2
DEVICES_PER_PROCESS = 2
MESH = (2, 2)  # data across the processes, fsdp within each
BATCH = 64
NO_RUNTIME = 77  # worker exit status when the distributed runtime cannot start
ROOT = Path(__file__).resolve().parent.parent


def _lotus_config():
    from lotus_jax.methods import lotus
    from lotus_jax.train.optim import optimizer_config

    cfg = lotus.default_config()
    cfg.update({"epochs": 2, "batch_size": BATCH, "alpha": 8.0, "stop_threshold": None})
    cfg.optimizer = optimizer_config("sgd", 0.02, 5e-4, momentum=0.9)  # SGD: no Adam amplification of noise
    return cfg


def split_stats(ctx, variables, split: str, prefix: str = "") -> dict[str, np.ndarray]:
    stats = ctx.evaluate(variables, split, keep_probs=True)
    return {f"{prefix}{split}/{k}": np.asarray(getattr(stats, k))
            for k in ("correct", "entropy", "labels", "prob_sums", "counts", "probs")}


def run_problem(ctx, original) -> dict[str, np.ndarray]:
    """LoTUS from `original`, then statistics of the result on D_f and D_u: a flat dict of host arrays."""
    import jax

    from lotus_jax import methods, sharding

    res = methods.unlearn(ctx, "lotus", original, _lotus_config(), jax.random.key(11))
    out = {f"history/{k}": np.asarray([h[k] for h in res.history], np.float64) for k in ("acc_f", "tau", "loss")}
    out["acc_u"] = np.float64(res.extra["acc_u"])
    for path, x in jax.tree_util.tree_flatten_with_path(sharding.to_host(res.variables))[0]:
        out["variables" + jax.tree_util.keystr(path)] = np.asarray(x)
    for split in ("forget", "val"):
        out.update(split_stats(ctx, res.variables, split))
    return out


def worker(process_id: int, port: int, directory: Path) -> None:
    import dataclasses

    import jax
    from flax import serialization

    try:
        jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=NUM_PROCESSES, process_id=process_id,
                                   initialization_timeout=60)
    except (RuntimeError, ValueError) as e:  # no runtime on this machine: reported, the test skips
        print(f"distributed runtime did not start: {e}", file=sys.stderr)
        sys.exit(NO_RUNTIME)
    from lotus_jax import sharding
    from lotus_jax.data import pipeline
    from tests.methods.helpers import make_context

    assert jax.process_count() == NUM_PROCESSES and jax.local_device_count() == DEVICES_PER_PROCESS
    ctx = make_context(seed=0, devices=1)
    ctx = dataclasses.replace(ctx, mesh=sharding.make_mesh(*MESH))
    original = serialization.msgpack_restore((directory / "original.msgpack").read_bytes())
    out = run_problem(ctx, original)
    across = dataclasses.replace(ctx, mesh=sharding.make_mesh(1, NUM_PROCESSES * DEVICES_PER_PROCESS))
    out.update(split_stats(across, original, "val", "original/"))
    local = next(pipeline.batches(ctx.dataset.train, ctx.splits.forget, BATCH))
    out["local_rows"] = np.asarray(local["image"].shape[0])
    out["local_first_label"] = np.asarray(local["label"][0])
    np.savez(directory / f"out{process_id}.npz", **out)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_equal_one_process(tmp_path):
    import jax
    from flax import serialization

    from lotus_jax.data import pipeline
    from tests.methods.helpers import trained_problem

    ctx, original = trained_problem(seed=0)
    (tmp_path / "original.msgpack").write_bytes(serialization.msgpack_serialize(jax.device_get(original)))
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT),
               XLA_FLAGS=f"--xla_force_host_platform_device_count={DEVICES_PER_PROCESS}")
    port = _free_port()
    procs = [subprocess.Popen([sys.executable, "-m", "tests.test_multihost", str(i), str(port), str(tmp_path)],
                              cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(NUM_PROCESSES)]
    expected = run_problem(ctx, original)  # single process, one device, while the workers run
    expected.update(split_stats(ctx, original, "val", "original/"))
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=150)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    codes = [p.returncode for p in procs]
    if NO_RUNTIME in codes:
        pytest.skip("jax.distributed runtime cannot start here: " + " | ".join(s[-300:] for s in logs))
    assert codes == [0] * NUM_PROCESSES, "\n".join(s[-3000:] for s in logs)

    first = next(pipeline.batches(ctx.dataset.train, ctx.splits.forget, BATCH))
    share = BATCH // NUM_PROCESSES
    for i in range(NUM_PROCESSES):
        got = dict(np.load(tmp_path / f"out{i}.npz"))
        assert int(got.pop("local_rows")) == share  # each process read only its rows
        assert int(got.pop("local_first_label")) == first["label"][i * share]
        assert set(got) == set(expected)
        for k in ("history/acc_f", "acc_u", "forget/correct", "val/correct", "forget/labels", "val/labels",
                  "forget/counts", "val/counts", "original/val/correct", "original/val/counts"):
            np.testing.assert_array_equal(got[k], expected[k], err_msg=k)
        for k in expected:
            np.testing.assert_allclose(got[k], expected[k], rtol=1e-5, atol=1e-5, err_msg=k)


if __name__ == "__main__":
    worker(int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]))
