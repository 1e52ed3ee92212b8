"""Import of ViT ``.npz`` checkpoints of google-research/vision_transformer and big_vision.

Both store the flattened Flax parameter tree, keys joined by '/'. vision_transformer names are
lotus_jax's own (Transformer/posembed_input/pos_embedding, encoderblock_N/{LayerNorm_0,
MultiHeadDotProductAttention_1, LayerNorm_2, MlpBlock_3}). big_vision differs in four ways, undone here:
an optional 'params/' (or 'opt/target/') prefix; block modules numbered MultiHeadDotProductAttention_0,
LayerNorm_1, MlpBlock_0; a top-level (or Transformer/) ``pos_embedding`` that is added to the patches
only, before the class token is prepended (converted by prepending a zero entry for the class token);
and, for scanned encoders, one 'Transformer/encoderblock/...' entry per parameter with a leading layer
axis. bfloat16 arrays (saved by numpy as 2-byte void) are read as bfloat16 and widened to float32.
Only class-token models can be imported (big_vision pool_type 'tok'); 'gap' and 'map' pooling cannot.
"""
from __future__ import annotations

import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

from lotus_jax.errors import ConfigError
from lotus_jax.models.import_torch import Imported, Weights, block_indices, grid_size, vit_settings

POS_KEY = "Transformer/posembed_input/pos_embedding"
POS_ALIASES = (POS_KEY, "Transformer/pos_embedding", "pos_embedding")
BIG_VISION_BLOCK = {"MultiHeadDotProductAttention_0": "MultiHeadDotProductAttention_1", "LayerNorm_1": "LayerNorm_2",
                    "MlpBlock_0": "MlpBlock_3"}
SCANNED = "Transformer/encoderblock/"
EPS = 1e-6
NORMALISATION = "the checkpoint expects inputs in [-1, 1]: normalise with mean 0.5, std 0.5 per channel"


def load(path: str | Path) -> dict[str, np.ndarray]:
    """name -> array of an ``.npz`` file (no pickled objects)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"missing file {path}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except (ValueError, OSError, zipfile.BadZipFile) as e:
        raise ConfigError(f"{path}: not a readable .npz file ({e})") from None


def _widen(value: np.ndarray) -> np.ndarray:
    """bfloat16 saved by numpy as 2-byte void -> bfloat16 view; other arrays unchanged."""
    if value.dtype.kind == "V" and value.dtype.itemsize == 2:
        return value.view(ml_dtypes.bfloat16)
    return value


def canonical(arrays: Mapping[str, np.ndarray], source: str) -> tuple[dict[str, np.ndarray], dict[str, str],
                                                                      list[str]]:
    """(arrays under vision_transformer names, name in file of each, notes) of either layout."""
    notes = []
    keys = list(arrays)
    for prefix in ("params/", "opt/target/"):
        if any(k.startswith(prefix) for k in keys):
            ignored = [k for k in keys if not k.startswith(prefix)]
            if ignored:
                notes.append(f"ignored {len(ignored)} entries outside '{prefix}' (e.g. {ignored[0]!r})")
            keys = [k for k in keys if k.startswith(prefix)]
            break
    else:
        prefix = ""
    out: dict[str, np.ndarray] = {}
    names: dict[str, str] = {}
    big_vision = any("/MultiHeadDotProductAttention_0/" in k for k in keys)
    for key in keys:
        value, short = _widen(arrays[key]), key[len(prefix):]
        entries = [(short, value, key)]
        if short.startswith(SCANNED):
            rest = short[len(SCANNED):]
            entries = [(f"Transformer/encoderblock_{i}/{rest}", value[i], f"{key}[{i}]") for i in range(len(value))]
        for name, array, shown in entries:
            if big_vision and name.startswith("Transformer/encoderblock_"):
                parts = name.split("/")
                parts[2] = BIG_VISION_BLOCK.get(parts[2], parts[2])
                name = "/".join(parts)
            if name in POS_ALIASES:
                name = POS_KEY if POS_KEY not in out else name
            out[name], names[name] = array, shown
    if any(k.startswith(SCANNED) for k in (key[len(prefix):] for key in keys)):
        notes.append("unstacked the scanned encoder blocks")
    vit_without_cls = "cls" not in out and any(k.startswith("Transformer/") for k in out)
    if vit_without_cls or any(k.startswith("MAPHead") for k in out):
        raise ConfigError(f"{source}: no 'cls' class token (big_vision pool_type 'gap' or 'map'); lotus_jax's ViT "
                          f"classifies the class token, so only pool_type 'tok' checkpoints can be imported")
    if POS_KEY in out and "cls" in out and np.ndim(out[POS_KEY]) == 3:
        length = out[POS_KEY].shape[1]
        root = int(round(length ** 0.5))
        if root * root == length:
            pos = np.asarray(out[POS_KEY], np.float32)
            out[POS_KEY] = np.concatenate([np.zeros_like(pos[:, :1]), pos], axis=1)
            notes.append("position embedding had no class-token entry (big_vision): prepended a zero entry")
    return out, names, notes


def import_npz_vit(arrays: Mapping[str, np.ndarray], source: str) -> Imported:
    """vision_transformer or big_vision ViT arrays -> lotus_jax ViT variables (LayerNorm eps 1e-6)."""
    tree, names, notes = canonical(arrays, source)
    w = Weights(tree, source, names)
    kernel = w.take("embedding/kernel", ndim=4)
    patch, patch_w, channels, hidden = kernel.shape
    if patch != patch_w:
        raise ConfigError(f"{source}: key {w.name('embedding/kernel')!r} has non-square patches {kernel.shape[:2]}")
    if not w.has(POS_KEY):
        raise ConfigError(f"{source}: no learned position embedding ('pos_embedding'); fixed 'sincos2d' position "
                          f"embeddings (big_vision) are not supported")
    pos = w.take(POS_KEY, ndim=3)
    w.take(POS_KEY, (1, pos.shape[1], hidden))
    grid = grid_size(pos.shape[1], True, w.name(POS_KEY), source)
    layers = block_indices(tree, r"Transformer/encoderblock_(\d+)/", source)
    first = "Transformer/encoderblock_0/"
    heads = w.take(first + "MultiHeadDotProductAttention_1/query/kernel", ndim=3).shape[1]
    if hidden % heads:
        raise ConfigError(f"{source}: {heads} attention heads do not divide the width {hidden}")
    mlp = w.take(first + "MlpBlock_3/Dense_0/kernel", ndim=2).shape[1]
    head_dim = hidden // heads

    def norm(prefix: str) -> dict[str, np.ndarray]:
        return {"scale": w.take(prefix + "/scale", (hidden,)), "bias": w.take(prefix + "/bias", (hidden,))}

    def linear(prefix: str, fan_in: int, fan_out: int) -> dict[str, np.ndarray]:
        return {"kernel": w.take(prefix + "/kernel", (fan_in, fan_out)), "bias": w.take(prefix + "/bias", (fan_out,))}

    params: dict[str, Any] = {
        "embedding": {"kernel": kernel, "bias": w.take("embedding/bias", (hidden,))},
        "cls": w.take("cls", (1, 1, hidden)),
    }
    encoder: dict[str, Any] = {"posembed_input": {"pos_embedding": pos}}
    for i in range(layers):
        p = f"Transformer/encoderblock_{i}/"
        att = p + "MultiHeadDotProductAttention_1/"
        mha = {m: {"kernel": w.take(att + m + "/kernel", (hidden, heads, head_dim)),
                   "bias": w.take(att + m + "/bias", (heads, head_dim))} for m in ("query", "key", "value")}
        mha["out"] = {"kernel": w.take(att + "out/kernel", (heads, head_dim, hidden)),
                      "bias": w.take(att + "out/bias", (hidden,))}
        encoder[f"encoderblock_{i}"] = {
            "LayerNorm_0": norm(p + "LayerNorm_0"),
            "MultiHeadDotProductAttention_1": mha,
            "LayerNorm_2": norm(p + "LayerNorm_2"),
            "MlpBlock_3": {"Dense_0": linear(p + "MlpBlock_3/Dense_0", hidden, mlp),
                           "Dense_1": linear(p + "MlpBlock_3/Dense_1", mlp, hidden)},
        }
    encoder["encoder_norm"] = norm("Transformer/encoder_norm")
    params["Transformer"] = encoder
    features, representation = hidden, None
    if w.has("pre_logits/kernel"):
        representation = w.take("pre_logits/kernel", ndim=2).shape[1]
        params["pre_logits"] = linear("pre_logits", hidden, representation)
        features = representation
    num_classes = None
    if w.has("head/kernel"):
        num_classes = w.take("head/kernel", ndim=2).shape[1]
        params["head"] = linear("head", features, num_classes)
    w.finish("a vision_transformer / big_vision ViT")
    settings = vit_settings(patch, hidden, layers, heads, mlp, EPS, grid * patch, representation)
    return Imported({"params": params}, settings, channels, num_classes, source, tuple(notes + [NORMALISATION]))

