"""Losses over padded batches: optax's per-example losses in float32, averaged over the valid rows only."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean of `values` over rows where `mask` (0 when no row is valid)."""
    m = mask.astype(jnp.float32)
    return jnp.sum(values * m) / jnp.maximum(jnp.sum(m), 1.0)


def cross_entropy(logits: jax.Array, labels: jax.Array, mask: jax.Array) -> jax.Array:
    """mean_i -log softmax(logits_i)_{y_i} over valid rows."""
    return masked_mean(optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels), mask)


def soft_cross_entropy(logits: jax.Array, targets: jax.Array, mask: jax.Array) -> jax.Array:
    """mean_i [-sum_c t_ic log softmax(logits_i)_c] over valid rows."""
    return masked_mean(optax.softmax_cross_entropy(logits.astype(jnp.float32), targets), mask)


def kl_divergence(target_logits: jax.Array, logits: jax.Array, mask: jax.Array, temperature: float = 1.0
                  ) -> jax.Array:
    """mean_i KL(softmax(target_i/T) || softmax(logits_i/T)) over valid rows."""
    t = jax.nn.log_softmax(target_logits.astype(jnp.float32) / temperature)
    s = jax.nn.log_softmax(logits.astype(jnp.float32) / temperature)
    return masked_mean(optax.losses.kl_divergence_with_log_targets(s, t), mask)
