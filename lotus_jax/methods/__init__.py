"""Unlearning methods, registered by the name used in `config.methods`.

Each method is a module with `unlearn(ctx, original, cfg, key) -> MethodResult` and `default_config()`.
"""

from __future__ import annotations

from types import ModuleType

import ml_collections as mlc

from lotus_jax.errors import ConfigError
from lotus_jax.methods import bad_teacher, finetune, lotus, neggrad_plus, random_labels, salun, scrub, ssd, unsir
from lotus_jax.methods.base import Method, MethodResult

MODULES: dict[str, ModuleType] = {
    "lotus": lotus,
    "finetune": finetune,
    "neggrad_plus": neggrad_plus,
    "random_labels": random_labels,
    "bad_teacher": bad_teacher,
    "scrub": scrub,
    "ssd": ssd,
    "unsir": unsir,
    "salun": salun,
}
METHODS: dict[str, Method] = {name: mod.unlearn for name, mod in MODULES.items()}


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r}; valid: {', '.join(sorted(METHODS))}")
    return METHODS[name]


def default_configs() -> dict[str, mlc.ConfigDict]:
    """Each method's config section, keyed by its name."""
    return {name: mod.default_config() for name, mod in MODULES.items()}


__all__ = ["METHODS", "MODULES", "Method", "MethodResult", "default_configs", "get_method"]
