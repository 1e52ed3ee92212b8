"""Avg Gap to the gold (retrained) model (docs/definitions.md §5)."""
from __future__ import annotations

from collections.abc import Mapping, Sequence

DEFAULT_KEYS = ("mia", "acc_forget", "acc_retain", "acc_test")


def avg_gap(
    model_metrics: Mapping[str, float],
    gold_metrics: Mapping[str, float],
    keys: Sequence[str] = DEFAULT_KEYS,
    decimals: int | None = None,
) -> float:
    """Mean over ``keys`` of |model[k] - gold[k]|; each value is rounded to ``decimals`` first when given
    (compat mode uses 2, as the reference does)."""
    if not keys:
        raise ValueError("avg_gap needs at least one metric key")

    def value(metrics: Mapping[str, float], key: str) -> float:
        v = float(metrics[key])
        return round(v, decimals) if decimals is not None else v

    gaps = [abs(value(model_metrics, k) - value(gold_metrics, k)) for k in keys]
    return sum(gaps) / len(gaps)
