"""ResNet-18, CIFAR variant of the LoTUS reference code (docs/definitions.md §7), in Flax linen.

Graph: 3x3/1 conv -> BN -> ReLU -> 3x3/2 max-pool (padding 1, -inf pad) -> 4 stages x 2 BasicBlocks
(widths w, 2w, 4w, 8w; first-block strides 1, 2, 2, 2) -> global average pool -> dense ``fc``.
Every block adds a 1x1 conv (no bias, no BN) on its identity path, even when shapes match.
Convolutions use torch's symmetric padding so imported torch weights give the same outputs, and
module names mirror the torch state-dict keys (conv1, bn1, layer1_0 ... layer4_1, fc).
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from lotus_jax.models.batchnorm import BatchNorm
from lotus_jax.models.conv import Conv
from lotus_jax.models.pooling import max_pool_3x3_s2

PAD3 = ((1, 1), (1, 1))
PAD0 = ((0, 0), (0, 0))
BN_MOMENTUM = 0.9  # flax keeps `momentum` of the old value: torch momentum 0.1.
BN_EPSILON = 1e-5


def _batch_norm(name: str, train: bool, dtype: Any) -> BatchNorm:
    """BatchNorm with torch's defaults; batch statistics in train mode, running averages otherwise."""
    return BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPSILON, dtype=dtype, name=name)


class BasicBlock(nn.Module):
    """relu(bn2(conv2(relu(bn1(conv1(x))))) + identity_conv(x)); conv1 and identity_conv use ``strides``."""

    features: int
    strides: int
    dtype: Any = jnp.float32
    small_conv_size: int = 2

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool, mask: jax.Array | None) -> jax.Array:
        """Apply the block to NHWC ``x``; ``mask`` (broadcastable to x) selects rows for BN statistics."""
        s = (self.strides, self.strides)
        conv = dict(features=self.features, dtype=self.dtype, small_conv_size=self.small_conv_size)
        y = Conv(kernel_size=(3, 3), strides=s, padding=PAD3, name="conv1", **conv)(x)
        y = _batch_norm("bn1", train, self.dtype)(y, mask=mask)
        y = nn.relu(y)
        y = Conv(kernel_size=(3, 3), padding=PAD3, name="conv2", **conv)(y)
        y = _batch_norm("bn2", train, self.dtype)(y, mask=mask)
        identity = Conv(kernel_size=(1, 1), strides=s, padding=PAD0, name="identity_conv", **conv)(x)
        return nn.relu(y + identity)


class ResNet18(nn.Module):
    """CIFAR-style ResNet-18; ``dtype`` is the compute dtype, parameters stay float32, logits are float32."""

    num_classes: int
    width: int = 64
    dtype: Any = jnp.float32
    small_conv_size: int = 2

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool, mask: jax.Array | None = None) -> jax.Array:
        """Logits (N, num_classes) for normalised NHWC images; ``mask`` (N,) excludes padded rows from BN."""
        bn_mask = None if mask is None else jnp.asarray(mask, bool)[:, None, None, None]
        x = jnp.asarray(x, self.dtype)
        x = Conv(
            features=self.width,
            kernel_size=(3, 3),
            padding=PAD3,
            dtype=self.dtype,
            small_conv_size=self.small_conv_size,
            name="conv1",
        )(x)
        x = _batch_norm("bn1", train, self.dtype)(x, mask=bn_mask)
        x = nn.relu(x)
        x = max_pool_3x3_s2(x)
        for stage, (mult, first_stride) in enumerate(zip((1, 2, 4, 8), (1, 2, 2, 2)), start=1):
            for index, strides in enumerate((first_stride, 1)):
                x = BasicBlock(
                    features=self.width * mult,
                    strides=strides,
                    dtype=self.dtype,
                    small_conv_size=self.small_conv_size,
                    name=f"layer{stage}_{index}",
                )(x, train=train, mask=bn_mask)
        x = jnp.mean(x, axis=(1, 2), dtype=jnp.promote_types(self.dtype, jnp.float32)).astype(self.dtype)
        x = nn.Dense(self.num_classes, dtype=self.dtype, name="fc")(x)
        return x.astype(jnp.float32)
