"""Unlearning methods, registered by the name used in `config.methods`."""

from __future__ import annotations

from lotus_jax.errors import ConfigError
from lotus_jax.methods import lotus
from lotus_jax.methods.base import Method, MethodResult

METHODS: dict[str, Method] = {
    "lotus": lotus.unlearn,
}


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r}; valid: {', '.join(sorted(METHODS))}")
    return METHODS[name]


__all__ = ["METHODS", "Method", "MethodResult", "get_method"]
