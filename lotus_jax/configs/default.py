"""Default: scikit-learn digits (embedded, no download), a narrow ResNet-18, the whole pipeline
(original, gold, LoTUS, evaluation) in about two minutes on two CPU cores.

    python -m lotus_jax.main --config configs/default.py --workdir runs/default

`python -m lotus_jax.main` with no --config runs this file (it is part of the installed package;
`configs/default.py` in the checkout re-exports it).
"""

from __future__ import annotations

import ml_collections as mlc

from lotus_jax.config import base_config, link_epochs, set_training


def get_config(variant: str = "") -> mlc.ConfigDict:
    """The default job; it is already CPU-sized, so `small` is the same job."""
    if variant not in ("", "small"):
        raise ValueError(f"unknown config variant {variant!r}; valid: '' or 'small'")
    c = base_config()
    c.data.source = "digits"
    c.data.mean, c.data.std = (0.3,), (0.4,)
    c.data.augment = "none"  # 8×8 digits: shifts or flips change the class evidence
    c.data.forget.fraction = 0.1
    c.model.name = "resnet18"
    c.model.width = 16
    set_training(c, epochs=30, batch_size=64, lr=0.05)
    c.lotus.batch_size = 32
    c.lotus.alpha = 8.0
    c.lotus.epochs = 10
    c.lotus.optimizer.lr = 1e-3
    c.eval.batch_size = 256
    return link_epochs(c)
