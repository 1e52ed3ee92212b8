"""Default: scikit-learn digits (embedded, no download), a narrow ResNet-18, the whole pipeline
(original, gold, LoTUS, evaluation) in about two minutes on two CPU cores.

    python -m lotus_jax.main --config configs/default.py --workdir runs/default

`python -m lotus_jax.main` with no --config runs the same config from inside the package
(`lotus_jax/configs/default.py`, which this file re-exports), so an installed package needs no checkout.
"""

from lotus_jax.configs.default import get_config

__all__ = ["get_config"]
