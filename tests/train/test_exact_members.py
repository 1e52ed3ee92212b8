"""Vmapped population members against their single runs, bit for bit, under XLA flags that round every
program alike (tests/train/exact_members.py, in a process of its own: XLA reads its flags once)."""

import os
import pathlib
import platform
import subprocess
import sys

import pytest

from tests.train import exact_members


def test_vmapped_members_are_bit_for_bit_their_single_runs_when_xla_rounds_every_program_alike():
    # Gold (Adam, SGD, the ResNet-18 with its per-member convolutions), LoTUS with a member stopped early over
    # 2 devices, Finetune on augmented batches, Random labels, SCRUB: every member bit for bit its single run.
    # Catches what float rounding would hide: each member given member 0's key, data order or augmentation
    # key, another member's convolution weights, a stopped member's updates kept (each mutation seen failing).
    if platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("the flags that make XLA round every program alike name an x86 instruction set")
    env = {**os.environ, "XLA_FLAGS": exact_members.EXACT_XLA_FLAGS, "JAX_PLATFORMS": "cpu"}
    env.pop("JAX_COMPILATION_CACHE_DIR", None)  # programs compiled under other flags must not be reused
    r = subprocess.run([sys.executable, "-m", "tests.train.exact_members"], capture_output=True, text=True,
                       env=env, cwd=pathlib.Path(__file__).parents[2], timeout=1200, check=False)
    lines = [line for line in r.stdout.splitlines() if line.startswith(("ok", "FAIL"))]
    assert r.returncode == 0 and len(lines) == 7 and all(line.startswith("ok ") for line in lines), (
        r.stdout + r.stderr[-3000:])
