"""Metrics of model outputs: accuracy, entropy, JSD / RF-JSD, MIA and Avg Gap (docs/definitions.md §5)."""
from lotus_jax.metrics.gap import DEFAULT_KEYS, avg_gap
from lotus_jax.metrics.jsd import FORMS, class_means, js_divergence_rows, jsd, rf_jsd
from lotus_jax.metrics.mia import mia
from lotus_jax.metrics.stats import accuracy, batch_statistics

__all__ = [
    "DEFAULT_KEYS",
    "FORMS",
    "accuracy",
    "avg_gap",
    "batch_statistics",
    "class_means",
    "js_divergence_rows",
    "jsd",
    "mia",
    "rf_jsd",
]
