"""Functions whose `jax.vmap` over a population's member axis runs them once per member on CPU.

XLA batches a convolution whose kernel differs per member into one grouped convolution, which its CPU
backend runs about a third slower than the members' convolutions one after another; `per_member` keeps the
single model's kernel for each member instead (docs/performance.md). Other backends keep XLA's batched form.
"""
from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp


def per_member(fn: Callable, weights: int) -> Callable:
    """`fn` whose vmap, when argument `weights` is batched (one set per member) and the backend is the CPU,
    stacks `fn` applied to each member's slices; otherwise the vmap batches `fn` as usual. Same values either
    way; no autodiff rule (wrap it in a `jax.custom_vjp`)."""

    @jax.custom_batching.custom_vmap
    def f(*args):
        return fn(*args)

    @f.def_vmap
    def rule(axis_size: int, in_batched: list[bool], *args):
        if in_batched[weights] and jax.default_backend() == "cpu":
            outs = [f(*(a[m] if b else a for a, b in zip(args, in_batched))) for m in range(axis_size)]
            out = jax.tree.map(lambda *xs: jnp.stack(xs), *outs)
        else:
            out = jax.vmap(fn, in_axes=tuple(0 if b else None for b in in_batched))(*args)
        return out, jax.tree.map(lambda _: True, out)

    return f
