"""Optimizers by name (`sgd`, `adam`, `adamw`) with an optional warm-up + cosine schedule."""

from __future__ import annotations

from collections.abc import Callable

import ml_collections as mlc
import optax

from lotus_jax.registry import Registry

OPTIMIZERS: Registry[Callable[..., optax.GradientTransformation]] = Registry("optimizer")
# `sgd` and `adam` add L2 weight decay to the gradient (torch's `weight_decay`); `adamw` decouples it.
OPTIMIZERS.register("sgd", lambda lr, wd, momentum: optax.chain(optax.add_decayed_weights(wd),
                                                                optax.sgd(lr, momentum=momentum or None)))
OPTIMIZERS.register("adam", lambda lr, wd, momentum: optax.chain(optax.add_decayed_weights(wd), optax.adam(lr)))
OPTIMIZERS.register("adamw", lambda lr, wd, momentum: optax.adamw(lr, weight_decay=wd))
SCHEDULES = ("constant", "cosine")


def optimizer_config(name: str, lr: float, weight_decay: float = 0.0, momentum: float = 0.0,
                     schedule: str = "constant", warmup_epochs: float = 0.0, epochs: int = 1) -> mlc.ConfigDict:
    """The optimizer section of a config, read by `make_optimizer`."""
    return mlc.ConfigDict(dict(name=name, lr=lr, weight_decay=weight_decay, momentum=momentum, schedule=schedule,
                               warmup_epochs=warmup_epochs, epochs=epochs))


def make_optimizer(opt_cfg, steps_per_epoch: int = 1) -> optax.GradientTransformation:
    """optax optimizer from {name, lr, momentum, weight_decay, schedule, warmup_epochs, epochs}.

    `schedule`: `constant`, or `cosine` (linear warm-up for `warmup_epochs`, then cosine to 0 at `epochs`).
    """
    lr = float(opt_cfg.lr)
    if opt_cfg.get("schedule", "constant") == "cosine":
        total = max(1, int(opt_cfg.epochs) * steps_per_epoch)
        warm = min(total - 1, int(float(opt_cfg.get("warmup_epochs", 0)) * steps_per_epoch))
        lr = (optax.warmup_cosine_decay_schedule(0.0, lr, warm, total) if warm > 0
              else optax.cosine_decay_schedule(lr, total))
    return OPTIMIZERS.get(opt_cfg.name)(lr, float(opt_cfg.get("weight_decay", 0.0) or 0.0),
                                        float(opt_cfg.get("momentum", 0.0) or 0.0))
