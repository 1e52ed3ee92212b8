"""The contract every unlearning method follows, and small helpers they share."""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

import jax

from lotus_jax.methods.common import Context, Variables


@dataclasses.dataclass
class MethodResult:
    """Unlearned variables, wall time of the whole unlearning call, per-epoch history, extras."""

    variables: Variables
    time_s: float
    history: list[dict]
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)


class Method(Protocol):
    def __call__(self, ctx: Context, original: Variables, cfg: Any, key: jax.Array) -> MethodResult: ...

