"""Per-example and per-class statistics of model outputs, computed once per batch.

Everything is float32 whatever the logits dtype, and rows where ``mask`` is False (padding) contribute
nothing: their ``correct``/``entropy``/``probs`` are zero and they are left out of the per-class sums.
Per-class sums simply add across batches, which makes RF-JSD independent of batch size and padding.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def batch_statistics(
    logits: jax.Array, labels: jax.Array, mask: jax.Array | None, num_classes: int
) -> dict[str, jax.Array]:
    """Statistics of one (possibly padded) batch.

    Args:
      logits: (N, k) logits, any float dtype; promoted to float32.
      labels: (N,) integer labels in [0, num_classes).
      mask: (N,) bool, True for real examples; None means all rows are real.
      num_classes: k, static.

    Returns:
      ``correct`` (N,) bool: argmax(logits) == label, False on masked rows.
      ``entropy`` (N,) float32: H(softmax) = -sum_j p_j log p_j in nats, 0 on masked rows.
      ``probs`` (N, k) float32: softmax, zero rows where masked.
      ``prob_sums`` (k, k) float32: row c = sum of ``probs`` over valid examples with label c.
      ``counts`` (k,) int32: number of valid examples with label c.
    """
    logits = jnp.asarray(logits).astype(jnp.float32)
    labels = jnp.asarray(labels).astype(jnp.int32)
    if mask is None:
        mask = jnp.ones(labels.shape, dtype=bool)
    mask = jnp.asarray(mask).astype(bool)

    log_probs = jax.nn.log_softmax(logits, axis=-1)
    probs = jnp.where(mask[:, None], jnp.exp(log_probs), 0.0)
    entropy = jnp.where(mask, -jnp.sum(probs * log_probs, axis=-1), 0.0)
    correct = (jnp.argmax(logits, axis=-1) == labels) & mask

    prob_sums = jax.ops.segment_sum(probs, labels, num_segments=num_classes)
    counts = jax.ops.segment_sum(mask.astype(jnp.int32), labels, num_segments=num_classes)
    return {
        "correct": correct,
        "entropy": entropy,
        "probs": probs,
        "prob_sums": prob_sums,
        "counts": counts,
    }


def accuracy(correct: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """Fraction of valid rows that are correct: sum(correct & mask) / sum(mask) (NaN if no valid row)."""
    correct = jnp.asarray(correct).astype(bool)
    if mask is None:
        mask = jnp.ones(correct.shape, dtype=bool)
    mask = jnp.asarray(mask).astype(bool)
    hits = jnp.sum(correct & mask, dtype=jnp.float32)
    return hits / jnp.sum(mask, dtype=jnp.float32)
