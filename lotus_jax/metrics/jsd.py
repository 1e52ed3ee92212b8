"""Jensen-Shannon divergence between row-stochastic matrices, and the retrain-free RF-JSD (docs/definitions.md §5).

Two forms:
  ``textbook``: JSD = mean_i [0.5 KL(p_i || m_i) + 0.5 KL(q_i || m_i)], m = (p + q) / 2, natural log,
    bounded by ln 2.
  ``compat``: the reference code's form, the only one that reproduces the published magnitudes. p and q are
    clamped to [1e-8, 1] and each divided by the sum of all its valid entries, m = (p + q) / 2, and
    value = sum_{valid i, j} 0.5 [m_ij log(m_ij / p_ij) + m_ij log(m_ij / q_ij)] / N, N = number of valid
    rows; for rows summing to 1 this is (1/N) mean_i 0.5 [KL(m_i || p_i) + KL(m_i || q_i)].
Masked rows contribute nothing; with no valid row the value is NaN.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

FORMS = ("textbook", "compat")
_COMPAT_EPS = 1e-8


def _kl_rows(a: jax.Array, b: jax.Array) -> jax.Array:
    """KL(a_i || b_i) per row, with 0 log 0 = 0 (b_ij > 0 wherever a_ij > 0 is assumed)."""
    pos = a > 0
    a_safe = jnp.where(pos, a, 1.0)
    b_safe = jnp.where(pos, b, 1.0)
    return jnp.sum(jnp.where(pos, a * (jnp.log(a_safe) - jnp.log(b_safe)), 0.0), axis=-1)


@jax.jit
def js_divergence_rows(p: jax.Array, q: jax.Array) -> jax.Array:
    """Per-row JS(p_i, q_i) = 0.5 KL(p_i || m_i) + 0.5 KL(q_i || m_i), m = (p + q) / 2; in [0, ln 2]."""
    p = jnp.asarray(p, jnp.float32)
    q = jnp.asarray(q, jnp.float32)
    m = 0.5 * (p + q)
    return jnp.maximum(0.5 * _kl_rows(p, m) + 0.5 * _kl_rows(q, m), 0.0)


def _valid_mask(p: jax.Array, mask: jax.Array | None) -> jax.Array:
    if mask is None:
        return jnp.ones(p.shape[:1], dtype=bool)
    return jnp.asarray(mask).astype(bool)


@functools.partial(jax.jit, static_argnames="form")
def jsd(
    p: jax.Array, q: jax.Array, mask: jax.Array | None = None, form: str = "textbook"
) -> jax.Array:
    """JSD between (N, k) row-stochastic p and q over the rows where ``mask`` is True (see module doc)."""
    if form not in FORMS:
        raise ValueError(f"unknown JSD form {form!r}; expected one of {FORMS}")
    p = jnp.asarray(p, jnp.float32)
    q = jnp.asarray(q, jnp.float32)
    valid = _valid_mask(p, mask)
    n_valid = jnp.sum(valid, dtype=jnp.float32)
    rows = valid[:, None]

    if form == "textbook":
        p = jnp.where(rows, p, 0.0)
        q = jnp.where(rows, q, 0.0)
        per_row = jnp.where(valid, js_divergence_rows(p, q), 0.0)
        return jnp.sum(per_row) / n_valid

    p = jnp.where(rows, jnp.clip(p, _COMPAT_EPS, 1.0), 1.0)
    q = jnp.where(rows, jnp.clip(q, _COMPAT_EPS, 1.0), 1.0)
    p = p / jnp.sum(jnp.where(rows, p, 0.0))
    q = q / jnp.sum(jnp.where(rows, q, 0.0))
    m = 0.5 * (p + q)
    log_m = jnp.log(m)
    terms = 0.5 * (m * (log_m - jnp.log(p)) + m * (log_m - jnp.log(q)))
    return jnp.sum(jnp.where(rows, terms, 0.0)) / n_valid


def class_means(prob_sums: jax.Array, counts: jax.Array) -> jax.Array:
    """Mean softmax per class: prob_sums[c] / counts[c]; zero rows for classes with no example."""
    prob_sums = jnp.asarray(prob_sums, jnp.float32)
    counts = jnp.asarray(counts)
    denom = jnp.maximum(counts, 1).astype(jnp.float32)
    return jnp.where((counts > 0)[:, None], prob_sums / denom[:, None], 0.0)


@functools.partial(jax.jit, static_argnames="form")
def rf_jsd(
    p_sums: jax.Array,
    p_counts: jax.Array,
    q_sums: jax.Array,
    q_counts: jax.Array,
    form: str = "textbook",
) -> jax.Array:
    """Retrain-free JSD: jsd(P, Q) over classes c with examples on both sides.

    P_c = p_sums[c] / p_counts[c] is the un-learned model's mean softmax over forget examples of class c;
    Q_c = q_sums[c] / q_counts[c] is the original model's mean softmax over unseen examples of class c.
    """
    present = (jnp.asarray(p_counts) > 0) & (jnp.asarray(q_counts) > 0)
    return jsd(class_means(p_sums, p_counts), class_means(q_sums, q_counts), mask=present, form=form)
