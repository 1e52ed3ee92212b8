"""Vision Transformer with google-research/vision_transformer parameter names, in Flax linen.

Patch embedding ``embedding`` (conv, kernel = stride = patch) -> prepend learned ``cls`` token ->
``Transformer`` (add ``posembed_input/pos_embedding``, ``encoderblock_{i}`` pre-norm blocks,
``encoder_norm``) -> optional ``pre_logits`` (dense + tanh) -> ``head`` on the class token.
No dropout. The position embedding is sized for the input resolution seen at init.
"""
from __future__ import annotations

import re
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

VIT_VARIANTS: dict[str, dict[str, int]] = {
    "Ti": dict(hidden_size=192, num_layers=12, num_heads=3, mlp_dim=768),
    "S": dict(hidden_size=384, num_layers=12, num_heads=6, mlp_dim=1536),
    "B": dict(hidden_size=768, num_layers=12, num_heads=12, mlp_dim=3072),
    "L": dict(hidden_size=1024, num_layers=24, num_heads=16, mlp_dim=4096),
}


def vit_variant_config(variant: str) -> dict[str, int]:
    """Architecture fields for a variant name 'SIZE/PATCH' (e.g. 'B/16', 'S/8'): the table row plus patch_size."""
    match = re.fullmatch(r"(Ti|S|B|L)/([1-9][0-9]*)", variant)
    if match is None:
        raise ValueError(
            f"Unknown ViT variant {variant!r}: expected '<size>/<patch>' with size in {sorted(VIT_VARIANTS)}, "
            "e.g. 'B/16'."
        )
    return dict(VIT_VARIANTS[match.group(1)], patch_size=int(match.group(2)))


class AddPositionEmbs(nn.Module):
    """Adds a learned position embedding ``pos_embedding`` of shape (1, length, D), init N(0, 0.02^2)."""

    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Return x + pos_embedding for x of shape (N, length, D)."""
        pos = self.param("pos_embedding", nn.initializers.normal(stddev=0.02), (1,) + x.shape[1:], jnp.float32)
        return x + pos.astype(self.dtype)


class MlpBlock(nn.Module):
    """Dense_0 -> exact GELU -> Dense_1."""

    mlp_dim: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Two-layer MLP back to the input width."""
        dense = dict(
            dtype=self.dtype,
            kernel_init=nn.initializers.xavier_uniform(),
            bias_init=nn.initializers.normal(stddev=1e-6),
        )
        y = nn.Dense(self.mlp_dim, name="Dense_0", **dense)(x)
        y = nn.gelu(y, approximate=False)
        return nn.Dense(x.shape[-1], name="Dense_1", **dense)(y)


class Encoder1DBlock(nn.Module):
    """Pre-norm block: x + MHA(LN(x)), then y + MLP(LN(y))."""

    mlp_dim: int
    num_heads: int
    layernorm_epsilon: float
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Apply one encoder block to (N, length, D)."""
        y = nn.LayerNorm(epsilon=self.layernorm_epsilon, dtype=self.dtype, name="LayerNorm_0")(x)
        y = nn.MultiHeadDotProductAttention(
            num_heads=self.num_heads,
            dtype=self.dtype,
            kernel_init=nn.initializers.xavier_uniform(),
            deterministic=True,
            force_fp32_for_softmax=True,
            name="MultiHeadDotProductAttention_1",
        )(y)
        x = x + y
        y = nn.LayerNorm(epsilon=self.layernorm_epsilon, dtype=self.dtype, name="LayerNorm_2")(x)
        y = MlpBlock(mlp_dim=self.mlp_dim, dtype=self.dtype, name="MlpBlock_3")(y)
        return x + y


class Encoder(nn.Module):
    """Position embedding, ``num_layers`` encoder blocks, final LayerNorm."""

    num_layers: int
    mlp_dim: int
    num_heads: int
    layernorm_epsilon: float
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Encode a token sequence (N, length, D)."""
        x = AddPositionEmbs(dtype=self.dtype, name="posembed_input")(x)
        for i in range(self.num_layers):
            x = Encoder1DBlock(
                mlp_dim=self.mlp_dim,
                num_heads=self.num_heads,
                layernorm_epsilon=self.layernorm_epsilon,
                dtype=self.dtype,
                name=f"encoderblock_{i}",
            )(x)
        return nn.LayerNorm(epsilon=self.layernorm_epsilon, dtype=self.dtype, name="encoder_norm")(x)


class ViT(nn.Module):
    """Vision Transformer classifier; ``dtype`` is the compute dtype, params float32, logits float32."""

    num_classes: int
    patch_size: int = 16
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    mlp_dim: int = 3072
    layernorm_epsilon: float = 1e-6
    representation_size: int | None = None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool, mask: jax.Array | None = None) -> jax.Array:
        """Logits (N, num_classes) for normalised NHWC images; ``train`` and ``mask`` have no effect (no
        dropout, no BatchNorm) and exist for a common model signature."""
        del train, mask
        x = jnp.asarray(x, self.dtype)
        p = self.patch_size
        x = nn.Conv(
            self.hidden_size, (p, p), strides=(p, p), padding="VALID", dtype=self.dtype, name="embedding"
        )(x)
        n, h, w, d = x.shape
        x = x.reshape(n, h * w, d)
        cls = self.param("cls", nn.initializers.zeros_init(), (1, 1, d), jnp.float32)
        x = jnp.concatenate([jnp.broadcast_to(cls.astype(self.dtype), (n, 1, d)), x], axis=1)
        x = Encoder(
            num_layers=self.num_layers,
            mlp_dim=self.mlp_dim,
            num_heads=self.num_heads,
            layernorm_epsilon=self.layernorm_epsilon,
            dtype=self.dtype,
            name="Transformer",
        )(x)
        x = x[:, 0]
        if self.representation_size is not None:
            x = jnp.tanh(nn.Dense(self.representation_size, dtype=self.dtype, name="pre_logits")(x))
        x = nn.Dense(
            self.num_classes,
            dtype=self.dtype,
            kernel_init=nn.initializers.zeros_init(),
            name="head",
        )(x)
        return x.astype(jnp.float32)
