"""Import of Hugging Face ``ViTForImageClassification`` / ``ViTModel`` checkpoints (e.g.
``google/vit-base-patch16-224``) without torch or transformers.

A checkpoint is a folder (or one of its weight files) with ``config.json`` and ``model.safetensors`` or
``pytorch_model.bin``. Safetensors files are parsed directly (8-byte little-endian header length, JSON
header, raw little-endian data); ``.bin`` files go through the torch-free reader of ``import_torch``.
The architecture comes from ``config.json``; its ``layer_norm_eps`` (1e-12 for the Google checkpoints)
becomes ``layernorm_epsilon``.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

from lotus_jax.errors import ConfigError
from lotus_jax.models.import_torch import (Imported, Weights, attention, block_indices, conv, dense, grid_size,
                                           layer_norm, read_pth, state_dict_of, vit_settings)

SAFETENSORS_DTYPES: dict[str, Any] = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16, "I64": np.int64,
    "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
# Entries of a ViTModel that a classifier on the class token does not use.
UNUSED = ("pooler.dense.weight", "pooler.dense.bias", "embeddings.mask_token")


def read_safetensors(path: str | Path) -> dict[str, np.ndarray]:
    """name -> array of a ``.safetensors`` file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"missing file {path}")
    data = path.read_bytes()
    if len(data) < 8:
        raise ConfigError(f"{path}: not a safetensors file (too short)")
    size = int(np.frombuffer(data[:8], "<u8")[0])
    try:
        header = json.loads(data[8:8 + size])
    except (ValueError, UnicodeDecodeError):
        raise ConfigError(f"{path}: not a safetensors file (bad JSON header)") from None
    body = memoryview(data)[8 + size:]
    arrays = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if entry.get("dtype") not in SAFETENSORS_DTYPES:
            raise ConfigError(f"{path}: key {name!r} has unsupported dtype {entry.get('dtype')!r}")
        dtype = np.dtype(SAFETENSORS_DTYPES[entry["dtype"]]).newbyteorder("<")
        shape = tuple(int(n) for n in entry["shape"])
        start, end = (int(n) for n in entry["data_offsets"])
        if not 0 <= start <= end <= len(body) or end - start != int(np.prod(shape, dtype=np.int64)) * dtype.itemsize:
            raise ConfigError(f"{path}: key {name!r} has data offsets {[start, end]} that do not fit shape {shape}")
        arrays[name] = np.frombuffer(body[start:end], dtype).reshape(shape).astype(dtype.newbyteorder("="))
    return arrays


def locate(path: str | Path) -> tuple[Path, Path]:
    """(weights file, config.json) of a checkpoint given as its folder or as its weight file."""
    path = Path(path)
    if path.is_dir():
        if (path / "model.safetensors.index.json").exists() or (path / "pytorch_model.bin.index.json").exists():
            raise ConfigError(f"{path}: sharded checkpoints are not supported; merge the shards into one file")
        weights = next((path / f for f in WEIGHT_FILES if (path / f).is_file()), None)
        if weights is None:
            raise ConfigError(f"missing file {path / WEIGHT_FILES[0]} (or {WEIGHT_FILES[1]})")
        folder = path
    elif path.is_file():
        weights, folder = path, path.parent
    else:
        raise ConfigError(f"missing file {path}")
    config = folder / "config.json"
    if not config.is_file():
        raise ConfigError(f"missing file {config} (the Hugging Face checkpoint's config)")
    return weights, config


def load(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, Any], str]:
    """(state dict, config, source name) of a Hugging Face checkpoint folder or weight file."""
    weights, config_path = locate(path)
    try:
        config = json.loads(config_path.read_text())
    except ValueError as e:
        raise ConfigError(f"{config_path}: not valid JSON ({e})") from None
    if weights.suffix == ".safetensors":
        state = read_safetensors(weights)
    else:
        state = state_dict_of(read_pth(weights), str(weights))
    preprocessor = weights.parent / "preprocessor_config.json"
    if preprocessor.is_file():
        config["_preprocessor"] = json.loads(preprocessor.read_text())
    return state, config, str(weights)


def _setting(config: Mapping[str, Any], key: str, default: Any, source: str) -> Any:
    value = config.get(key, default)
    if value is None:
        raise ConfigError(f"{source}: config.json lacks {key!r}")
    return value


def _projection(w: Weights, prefix: str, width: int, bias: bool) -> tuple[np.ndarray, np.ndarray]:
    """torch-layout (weight, bias) of a width x width Linear; a zero bias when the model has none."""
    b = w.take(prefix + ".bias", (width,)) if bias else np.zeros(width, np.float32)
    return w.take(prefix + ".weight", (width, width)), b


def import_hf_vit(state: Mapping[str, np.ndarray], config: Mapping[str, Any], source: str) -> Imported:
    """Hugging Face ViT state dict and config -> lotus_jax ViT variables.

    Keys (``vit.`` prefix for ViTForImageClassification): embeddings.{cls_token, position_embeddings,
    patch_embeddings.projection}, encoder.layer.N.{layernorm_before, attention.attention.{query, key, value},
    attention.output.dense, layernorm_after, intermediate.dense, output.dense}, layernorm, and the top-level
    classifier (absent for ViTModel, whose pooler is dropped: classification uses the class token).
    """
    if config.get("model_type", "vit") != "vit":
        raise ConfigError(f"{source}: model_type {config.get('model_type')!r} is not supported (only 'vit')")
    act = config.get("hidden_act", "gelu")
    if act != "gelu":
        raise ConfigError(f"{source}: hidden_act {act!r} is not supported: lotus_jax's ViT uses exact GELU ('gelu')")
    hidden = int(_setting(config, "hidden_size", 768, source))
    heads = int(_setting(config, "num_attention_heads", 12, source))
    mlp = int(_setting(config, "intermediate_size", 3072, source))
    patch = int(_setting(config, "patch_size", 16, source))
    channels = int(_setting(config, "num_channels", 3, source))
    eps = float(_setting(config, "layer_norm_eps", 1e-12, source))
    qkv_bias = bool(config.get("qkv_bias", True))
    if hidden % heads:
        raise ConfigError(f"{source}: num_attention_heads {heads} does not divide hidden_size {hidden}")
    names = {(k[len("vit."):] if k.startswith("vit.") else k): k for k in state}
    w = Weights({short: state[k] for short, k in names.items()}, source, names)
    for key in UNUSED:
        w.skip(key)
    pos = w.take("embeddings.position_embeddings", ndim=3)
    w.take("embeddings.position_embeddings", (1, pos.shape[1], hidden))
    grid = grid_size(pos.shape[1], True, "embeddings.position_embeddings", source)
    layers = block_indices(w.arrays, r"encoder\.layer\.(\d+)\.", source)
    expected_layers = config.get("num_hidden_layers", layers)
    if layers != expected_layers:
        raise ConfigError(f"{source}: the weights have {layers} encoder layers but config.json says "
                          f"num_hidden_layers={expected_layers}")
    proj = "embeddings.patch_embeddings.projection"
    params: dict[str, Any] = {
        "embedding": {"kernel": conv(w.take(proj + ".weight", (hidden, channels, patch, patch))),
                      "bias": w.take(proj + ".bias", (hidden,))},
        "cls": w.take("embeddings.cls_token", (1, 1, hidden)),
    }
    encoder: dict[str, Any] = {"posembed_input": {"pos_embedding": pos}}
    for i in range(layers):
        p = f"encoder.layer.{i}."
        qkv = [_projection(w, p + f"attention.attention.{m}", hidden, qkv_bias) for m in ("query", "key", "value")]
        out = _projection(w, p + "attention.output.dense", hidden, True)
        encoder[f"encoderblock_{i}"] = {
            "LayerNorm_0": layer_norm(w, p + "layernorm_before", hidden),
            "MultiHeadDotProductAttention_1": attention(*qkv, out, heads),
            "LayerNorm_2": layer_norm(w, p + "layernorm_after", hidden),
            "MlpBlock_3": {"Dense_0": dense(w, p + "intermediate.dense", hidden, mlp),
                           "Dense_1": dense(w, p + "output.dense", mlp, hidden)},
        }
    encoder["encoder_norm"] = layer_norm(w, "layernorm", hidden)
    params["Transformer"] = encoder
    num_classes = None
    if w.has("classifier.weight"):
        num_classes = w.take("classifier.weight", ndim=2).shape[0]
        params["head"] = dense(w, "classifier", hidden, num_classes)
    w.finish("a Hugging Face ViTForImageClassification / ViTModel")
    notes = []
    dropped = [w.name(k) for k in UNUSED if w.has(k)]
    if dropped:
        notes.append(f"dropped {', '.join(dropped)} (unused by a classifier on the class token)")
    pre = config.get("_preprocessor", {})
    if "image_mean" in pre and "image_std" in pre:
        notes.append(f"the checkpoint expects inputs normalised with mean {tuple(pre['image_mean'])}, "
                     f"std {tuple(pre['image_std'])}")
    settings = vit_settings(patch, hidden, layers, heads, mlp, eps, grid * patch, None)
    return Imported({"params": params}, settings, channels, num_classes, source, tuple(notes))
