"""Unlearning methods, registered by the name used in `config.methods`.

A method is a module with `default_config() -> ConfigDict` (its config section) and
`plan(ctx, original, cfg, key) -> train.runner.Plan` (its state, steps and what each epoch runs); the
runner does the rest. README "Adding a method" shows a complete one.
"""

from __future__ import annotations

from types import ModuleType

import jax
import ml_collections as mlc

from lotus_jax.methods import bad_teacher, finetune, lotus, neggrad_plus, random_labels, salun, scrub, ssd, unsir
from lotus_jax.registry import Registry
from lotus_jax.train import runner
from lotus_jax.train.context import Context
from lotus_jax.train.runner import MethodResult
from lotus_jax.train.state import Variables

REGISTRY: Registry[ModuleType] = Registry("method")
for _module in (lotus, finetune, neggrad_plus, random_labels, bad_teacher, scrub, ssd, unsir, salun):
    REGISTRY.register(_module.__name__.rsplit(".", 1)[-1], _module)


def default_configs() -> dict[str, mlc.ConfigDict]:
    """Each method's config section, keyed by its name."""
    return {name: module.default_config() for name, module in REGISTRY.items()}


def unlearn(ctx: Context, name: str, original: Variables, cfg, key: jax.Array) -> MethodResult:
    """Runs method `name` from the `original` variables with its config section `cfg`."""
    module = REGISTRY.get(name)
    return runner.run(ctx, name, lambda: module.plan(ctx, original, cfg, key), cfg, key, augment=ctx.unlearn_augment)


__all__ = ["REGISTRY", "MethodResult", "default_configs", "unlearn"]
