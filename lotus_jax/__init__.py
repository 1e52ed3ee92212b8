"""lotus_jax: LoTUS machine unlearning and its baselines for Flax models, with per-example forgetting audits.

Importing the package sets XLA CPU flags that speed up its steps (YNNPACK fusions of dots and reductions)
unless `XLA_FLAGS` already names them or `LOTUS_JAX_XLA_DEFAULTS=0`; they only take effect when imported
before JAX starts its CPU backend. docs/performance.md has the measurements.
"""

import os

CPU_FLAGS = ("--xla_cpu_experimental_ynn_fusion_type=dot,reduce",)


def _set_xla_cpu_flags() -> None:
    if os.environ.get("LOTUS_JAX_XLA_DEFAULTS", "1") == "0":
        return
    flags = os.environ.get("XLA_FLAGS", "")
    extra = [f for f in CPU_FLAGS if f.split("=", 1)[0] not in flags]
    if extra:
        os.environ["XLA_FLAGS"] = " ".join([flags, *extra]).strip()


_set_xla_cpu_flags()
