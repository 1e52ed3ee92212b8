"""Model zoo: CIFAR ResNet-18 and Vision Transformer, registered by `model.name` in `REGISTRY` and built from
an ml_collections config."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
from flax import linen as nn

from lotus_jax.models.conv import Conv
from lotus_jax.models.resnet import ResNet18
from lotus_jax.models.vit import VIT_VARIANTS, ViT, vit_variant_config
from lotus_jax.registry import Registry

ModelBuilder = Callable[[Any, int, Any], nn.Module]
REGISTRY: Registry[ModelBuilder] = Registry("model")

VIT_OVERRIDES: tuple[str, ...] = (
    "patch_size",
    "hidden_size",
    "num_layers",
    "num_heads",
    "mlp_dim",
    "layernorm_epsilon",
    "representation_size",
)


@REGISTRY.register("resnet18")
def _resnet18(model_cfg: Any, num_classes: int, dtype: Any) -> nn.Module:
    """ResNet-18 (CIFAR variant); optional ``width`` (64) and ``small_conv_size`` (2, 0 = off)."""
    kwargs = {key: model_cfg.get(key) for key in ("width", "small_conv_size")}
    kwargs = {key: value for key, value in kwargs.items() if value is not None}
    return ResNet18(num_classes=num_classes, dtype=dtype, **kwargs)


@REGISTRY.register("vit")
def _vit(model_cfg: Any, num_classes: int, dtype: Any) -> nn.Module:
    """ViT of ``variant`` ('B/16' when absent) with the non-None ``VIT_OVERRIDES`` applied."""
    variant = model_cfg.get("variant")
    kwargs = vit_variant_config(variant if variant is not None else "B/16")
    kwargs.update({key: model_cfg.get(key) for key in VIT_OVERRIDES if model_cfg.get(key) is not None})
    return ViT(num_classes=num_classes, dtype=dtype, **kwargs)


MODEL_NAMES: tuple[str, ...] = REGISTRY.names()


def init_compiler_options() -> dict[str, int] | None:
    """XLA options for compiling a model's initialiser, a program that runs once. On CPU, XLA's default LLVM
    pipeline spends seconds optimising its random-number code (ResNet-18: 3.6 s at level 3, 1.8 s at level 1;
    width 4: 6.3 vs 1.7 s); level 1 gives the same values bit for bit (tests/models/test_init.py)."""
    return {"xla_backend_optimization_level": 1} if jax.default_backend() == "cpu" else None


def init_function(model: nn.Module, sample: Any) -> Callable[[jax.Array], Any]:
    """`key -> variables` of `model` initialised in inference mode on inputs shaped like `sample`."""
    return lambda key: model.init({"params": key}, sample, train=False)


def jit_init(init: Callable[[jax.Array], Any], **jit_kwargs: Any) -> Callable[[jax.Array], Any]:
    """`init` (an `init_function`) jitted with `init_compiler_options()` (and `jit_kwargs`, e.g. shardings)."""
    return jax.jit(init, compiler_options=init_compiler_options(), **jit_kwargs)


def build_model(model_cfg: Any, num_classes: int, dtype: Any) -> nn.Module:
    """Model named by ``model_cfg.name`` (a name in ``REGISTRY``); absent or None config keys take the defaults.

    resnet18: optional ``width`` (64) and ``small_conv_size`` (2).
    vit: ``variant`` ('Ti/16', 'S/16', 'B/16', 'L/16', any patch size) and optional overrides of
    ``patch_size, hidden_size, num_layers, num_heads, mlp_dim, layernorm_epsilon, representation_size``.
    An unknown name raises a ``ConfigError`` (a ``ValueError``) listing the valid ones.
    """
    return REGISTRY.get(model_cfg.get("name"))(model_cfg, num_classes, dtype)


__all__ = [
    "MODEL_NAMES",
    "REGISTRY",
    "VIT_VARIANTS",
    "Conv",
    "ResNet18",
    "ViT",
    "build_model",
    "init_compiler_options",
    "init_function",
    "jit_init",
    "vit_variant_config",
]
