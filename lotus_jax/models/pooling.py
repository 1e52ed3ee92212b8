"""ResNet's 3x3 / stride 2 / padding 1 max-pool with a gradient XLA's CPU backend computes fast.

`lax.reduce_window`'s gradient is a select-and-scatter, which XLA runs slowly on CPU (120 ms of a 930 ms
ResNet-18 step at batch 128). For even input sizes the pool is computed as two 1-D pools, first along
columns, then along rows: the maximum of a 3x3 window is the maximum over its 3 rows of each row's maximum.
A 1-D pool of stride 2 reads the input's even and odd positions: out[a] = max(odd[a-1], even[a], odd[a])
(odd[-1] = -inf, torch's padding). Its gradient goes to the first of the three that equals the output; so
the 2-D gradient goes to the first row of the window holding the maximum and, in it, to the first column:
the window's first maximum in row-major order, the element `reduce_window`'s gradient picks. Values are
bit-identical to `flax.linen.max_pool` with -inf padding, gradients too up to the order in which an input
that is the maximum of several windows adds their gradients (the last bit); other shapes use `max_pool`.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import linen as nn


def _even_odd(x: jax.Array, axis: int) -> tuple[jax.Array, jax.Array]:
    """x's even and odd positions along `axis` (of even length)."""
    pairs = x.reshape(x.shape[:axis] + (x.shape[axis] // 2, 2) + x.shape[axis + 1:])
    return (jax.lax.index_in_dim(pairs, 0, axis + 1, keepdims=False),
            jax.lax.index_in_dim(pairs, 1, axis + 1, keepdims=False))


def _shift(x: jax.Array, axis: int, by: int, fill: float) -> jax.Array:
    """x moved by `by` (±1) positions along `axis`: out[a] = x[a - by], `fill` where that is outside."""
    pad = [(0, 0)] * x.ndim
    pad[axis] = (by, 0) if by > 0 else (0, -by)
    start = 0 if by > 0 else -by
    return jax.lax.slice_in_dim(jnp.pad(x, pad, constant_values=fill), start, start + x.shape[axis], axis=axis)


def _taps(x: jax.Array, axis: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The window's three inputs per output position: odd[a-1], even[a], odd[a]."""
    even, odd = _even_odd(x, axis)
    return _shift(odd, axis, 1, -jnp.inf), even, odd


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _pool_1d(x: jax.Array, axis: int) -> jax.Array:
    """Max over windows of 3 with stride 2 and one -inf pad at each end, along `axis` (even length)."""
    previous, even, odd = _taps(x, axis)
    return jnp.maximum(jnp.maximum(previous, even), odd)


def _pool_1d_fwd(x: jax.Array, axis: int) -> tuple[jax.Array, jax.Array]:
    return _pool_1d(x, axis), x


def _pool_1d_bwd(axis: int, x: jax.Array, g: jax.Array) -> tuple[jax.Array]:
    previous, even, odd = _taps(x, axis)
    y = jnp.maximum(jnp.maximum(previous, even), odd)
    zero = jnp.zeros((), g.dtype)
    to_previous = previous == y  # first in window order
    to_even = (even == y) & ~to_previous
    d_even = jnp.where(to_even, g, zero)
    # odd[a] receives from window a (when neither odd[a-1] nor even[a] came first) and from window a + 1.
    d_odd = jnp.where(to_previous | to_even, zero, g) + _shift(jnp.where(to_previous, g, zero), axis, -1, 0.0)
    return (jnp.stack([d_even, d_odd], axis=axis + 1).reshape(x.shape),)


_pool_1d.defvjp(_pool_1d_fwd, _pool_1d_bwd)


def max_pool_3x3_s2(x: jax.Array) -> jax.Array:
    """torch's `max_pool2d(x, 3, 2, 1)` on NHWC `x`: -inf padding, output ceil(H / 2) x ceil(W / 2)."""
    if x.shape[1] % 2 == 0 and x.shape[2] % 2 == 0:
        return _pool_1d(_pool_1d(x, 2), 1)  # columns, then rows: ties go to the row-major first maximum
    return nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
