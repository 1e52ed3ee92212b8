"""Model zoo: CIFAR ResNet-18 and Vision Transformer, built from an ml_collections config."""
from __future__ import annotations

from typing import Any

from flax import linen as nn

from lotus_jax.models.conv import Conv
from lotus_jax.models.resnet import ResNet18
from lotus_jax.models.vit import VIT_VARIANTS, ViT, vit_variant_config

MODEL_NAMES: tuple[str, ...] = ("resnet18", "vit")

VIT_OVERRIDES: tuple[str, ...] = (
    "patch_size",
    "hidden_size",
    "num_layers",
    "num_heads",
    "mlp_dim",
    "layernorm_epsilon",
    "representation_size",
)


def build_model(model_cfg: Any, num_classes: int, dtype: Any) -> nn.Module:
    """Model named by ``model_cfg.name``; absent or None config keys take the defaults.

    resnet18: optional ``width`` (64) and ``small_conv_size`` (2).
    vit: ``variant`` ('Ti/16', 'S/16', 'B/16', 'L/16', any patch size) and optional overrides of
    ``patch_size, hidden_size, num_layers, num_heads, mlp_dim, layernorm_epsilon, representation_size``.
    """
    name = model_cfg.get("name")
    if name == "resnet18":
        kwargs = {key: model_cfg.get(key) for key in ("width", "small_conv_size")}
        kwargs = {key: value for key, value in kwargs.items() if value is not None}
        return ResNet18(num_classes=num_classes, dtype=dtype, **kwargs)
    if name == "vit":
        variant = model_cfg.get("variant")
        kwargs = vit_variant_config(variant if variant is not None else "B/16")
        kwargs.update({key: model_cfg.get(key) for key in VIT_OVERRIDES if model_cfg.get(key) is not None})
        return ViT(num_classes=num_classes, dtype=dtype, **kwargs)
    raise ValueError(f"Unknown model name {name!r}; valid names: {', '.join(MODEL_NAMES)}.")


__all__ = [
    "Conv",
    "MODEL_NAMES",
    "ResNet18",
    "VIT_VARIANTS",
    "ViT",
    "build_model",
    "vit_variant_config",
]
