"""Converts pretrained weights into an orbax checkpoint that the pipeline starts from.

    python -m lotus_jax.convert --input PATH --output DIR [--format auto|torchvision|hf|npz|resnet18]
        [--num_classes N [--head_init zeros|lecun] [--seed S]] [--image_size S] [--num_heads H]

Formats: ``torchvision`` (a VisionTransformer state dict such as vit_b_16's .pth), ``hf`` (a Hugging Face
ViTForImageClassification / ViTModel folder with config.json and model.safetensors or pytorch_model.bin),
``npz`` (google-research/vision_transformer or big_vision ViT .npz) and ``resnet18`` (the reference code's
CIFAR ResNet-18 state dict); ``auto`` tells them apart by file type and key names. No torch is needed.

``--num_classes`` replaces the head by a new one (zero or LeCun-normal kernel, zero bias) for a dataset
with that many classes, dropping a ViT's pre-logits layer. ``--image_size`` resamples a ViT's position
embedding to the patch grid of that resolution (bilinear, corners aligned, class-token entry kept).
The written checkpoint holds {'params'} (ViT) or {'params', 'batch_stats'} (ResNet-18); the command
prints the ``--config.model.*`` settings that make ``python -m lotus_jax.main`` build the same model, to
pass with ``--config.original_checkpoint=DIR``. Errors print ``error: ...`` and exit with status 1.
"""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import flags

from lotus_jax import checkpoint
from lotus_jax.errors import ConfigError
from lotus_jax.models import VIT_VARIANTS, build_model
from lotus_jax.models import import_hf, import_npz
from lotus_jax.models.import_torch import (Imported, import_resnet18, import_torchvision_vit, read_pth,
                                           state_dict_of)

FORMATS = ("auto", "torchvision", "hf", "npz", "resnet18")
HEAD_INITS = ("zeros", "lecun")
ARCHITECTURE = ("hidden_size", "num_layers", "num_heads", "mlp_dim")


def _torch_format(state: dict[str, np.ndarray]) -> str | None:
    """Format of a torch state dict judged by its key names."""
    if "conv_proj.weight" in state:
        return "torchvision"
    if "conv1.weight" in state and "layer1.0.conv1.weight" in state:
        return "resnet18"
    if any("embeddings.patch_embeddings.projection" in k for k in state):
        return "hf"
    return None


def load(path: str | Path, fmt: str = "auto", num_heads: int | None = None) -> Imported:
    """Reads and converts the checkpoint at ``path`` (format ``fmt``, or detected when 'auto')."""
    if fmt not in FORMATS:
        raise ConfigError(f"unknown format {fmt!r}; valid: {', '.join(FORMATS)}")
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"missing file {path}")
    state = None
    if fmt == "auto":
        if path.is_dir() or path.suffix == ".safetensors":
            fmt = "hf"
        elif path.suffix == ".npz":
            fmt = "npz"
        else:
            state = state_dict_of(read_pth(path), str(path))
            detected = _torch_format(state)
            if detected is None:
                raise ConfigError(f"{path}: cannot tell the checkpoint format from its keys (e.g. "
                                  f"{sorted(state)[0]!r}); pass --format")
            fmt = detected
    if fmt == "hf":
        hf_state, config, source = import_hf.load(path)
        imported = import_hf.import_hf_vit(hf_state, config, source)
    elif fmt == "npz":
        imported = import_npz.import_npz_vit(import_npz.load(path), str(path))
    else:
        if path.is_dir():
            raise ConfigError(f"{path} is a folder; format {fmt!r} takes a .pth file")
        state = state if state is not None else state_dict_of(read_pth(path), str(path))
        if fmt == "torchvision":
            return import_torchvision_vit(state, str(path), num_heads)
        imported = import_resnet18(state, str(path))
    if num_heads is not None and imported.model.get("num_heads") != num_heads:
        found = (f"it has {imported.model['num_heads']} heads" if "num_heads" in imported.model
                 else "it is not a ViT")
        raise ConfigError(f"--num_heads {num_heads} does not fit {imported.source} ({found}); --num_heads is for "
                          f"torchvision state dicts, which do not record the head count")
    return imported


def _with_note(imported: Imported, note: str, **changes: Any) -> Imported:
    return dataclasses.replace(imported, notes=imported.notes + (note,), **changes)


def replace_head(imported: Imported, num_classes: int, init: str = "zeros", seed: int = 0) -> Imported:
    """A new head for ``num_classes`` classes: zero or LeCun-normal kernel, zero bias; a ViT's pre_logits
    layer is dropped, so the head reads the class token's final representation directly."""
    if num_classes < 1:
        raise ConfigError(f"--num_classes must be positive, got {num_classes}")
    if init not in HEAD_INITS:
        raise ConfigError(f"unknown head init {init!r}; valid: {', '.join(HEAD_INITS)}")
    params = dict(imported.variables["params"])
    model = dict(imported.model)
    notes = []
    if model["name"] == "vit":
        name, fan_in = "head", model["hidden_size"]
        if params.pop("pre_logits", None) is not None:
            model.pop("representation_size", None)
            notes.append("dropped the pre_logits layer")
    else:
        name, fan_in = "fc", 8 * model["width"]
    shape = (fan_in, num_classes)
    if init == "zeros":
        kernel = np.zeros(shape, np.float32)
    else:
        kernel = np.asarray(jax.nn.initializers.lecun_normal()(jax.random.key(seed), shape, jnp.float32))
    params[name] = {"kernel": kernel, "bias": np.zeros(num_classes, np.float32)}
    old = "no head" if imported.num_classes is None else f"the {imported.num_classes}-class head"
    notes.append(f"replaced {old} by a new {init} head for {num_classes} classes")
    variables = dict(imported.variables, params=params)
    return dataclasses.replace(imported, variables=variables, model=model, num_classes=num_classes,
                               notes=imported.notes + tuple(notes))


def _interpolation_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) linear interpolation weights, output i at input coordinate i * (n_in - 1) / (n_out - 1)."""
    coords = np.arange(n_out) * ((n_in - 1) / (n_out - 1) if n_out > 1 else 0.0)
    lo = np.clip(np.floor(coords).astype(int), 0, n_in - 1)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = coords - lo
    weights = np.zeros((n_out, n_in))
    np.add.at(weights, (np.arange(n_out), lo), 1.0 - frac)
    np.add.at(weights, (np.arange(n_out), hi), frac)
    return weights


def resize_position_embedding(pos: np.ndarray, grid: int) -> np.ndarray:
    """(1, 1 + g*g, D) position embedding -> (1, 1 + grid*grid, D): the class-token entry kept, the g x g
    patch grid (row-major) resampled bilinearly with corners aligned (as scipy.ndimage.zoom, order 1)."""
    length, width = pos.shape[1:]
    old = int(round((length - 1) ** 0.5))
    patches = np.asarray(pos[0, 1:], np.float64).reshape(old, old, width)
    m = _interpolation_matrix(old, grid)
    resized = np.einsum("ai,bj,ijd->abd", m, m, patches).reshape(1, grid * grid, width)
    return np.concatenate([pos[:, :1], resized.astype(np.float32)], axis=1)


def set_image_size(imported: Imported, image_size: int) -> Imported:
    """A ViT for ``image_size`` x ``image_size`` inputs: position embedding resized to its patch grid."""
    if imported.model["name"] != "vit":
        raise ConfigError("--image_size only applies to ViT checkpoints (ResNet-18 takes any resolution)")
    patch, old = imported.model["patch_size"], imported.model["image_size"]
    if image_size < patch or image_size % patch:
        raise ConfigError(f"--image_size {image_size} is not a positive multiple of the patch size {patch}")
    if image_size == old:
        return imported
    params = dict(imported.variables["params"])
    transformer = dict(params["Transformer"])
    pos = transformer["posembed_input"]["pos_embedding"]
    transformer["posembed_input"] = {"pos_embedding": resize_position_embedding(pos, image_size // patch)}
    params["Transformer"] = transformer
    model = dict(imported.model, image_size=image_size)
    note = (f"position embedding resampled from a {old // patch}x{old // patch} to a "
            f"{image_size // patch}x{image_size // patch} patch grid ({old} -> {image_size} px)")
    return _with_note(imported, note, variables=dict(imported.variables, params=params), model=model)


def model_settings(imported: Imported) -> dict[str, Any]:
    """The ``config.model`` settings to pass: the imported ones plus the matching ViT variant, if any."""
    model = dict(imported.model)
    if model["name"] != "vit":
        return model
    for size, row in VIT_VARIANTS.items():
        if all(row[k] == model[k] for k in ARCHITECTURE):
            return {"name": "vit", "variant": f"{size}/{model['patch_size']}",
                    **{k: v for k, v in model.items() if k != "name"}}
    return model


def _shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {jax.tree_util.keystr(p): tuple(np.shape(x)) for p, x in flat}


def check_model(imported: Imported) -> None:
    """ConfigError unless the variables have exactly the tree and shapes of the model the settings build."""
    if imported.num_classes is None:
        raise ConfigError(f"{imported.source}: the checkpoint has no classification head; pass --num_classes")
    cfg = ml_collections.ConfigDict(model_settings(imported))
    model = build_model(cfg, imported.num_classes, jnp.float32)
    size = imported.model.get("image_size") or 32
    x = jax.ShapeDtypeStruct((1, size, size, imported.in_channels), jnp.float32)
    like = jax.eval_shape(lambda inputs: model.init({"params": jax.random.key(0)}, inputs, train=False), x)
    want = _shapes({k: v for k, v in like.items() if jax.tree.leaves(v)})
    got = _shapes(imported.variables)
    for key in sorted(set(want) | set(got)):
        if want.get(key) != got.get(key):
            raise ConfigError(f"converted weights do not fit the lotus_jax model at {key}: "
                              f"{got.get(key)} converted, {want.get(key)} expected")


def convert(input_path: str | Path, output: str | Path, fmt: str = "auto", num_classes: int | None = None,
            image_size: int | None = None, num_heads: int | None = None, head_init: str = "zeros",
            seed: int = 0) -> Imported:
    """Converts ``input_path`` and writes the orbax checkpoint ``output``; returns what was written."""
    output = Path(output)
    if output.exists() and not checkpoint.exists(output) and (output.is_file() or any(output.iterdir())):
        raise ConfigError(f"{output} exists and is not an orbax checkpoint; refusing to overwrite it")
    imported = load(input_path, fmt, num_heads)
    if num_classes is not None:
        imported = replace_head(imported, num_classes, head_init, seed)
    if image_size is not None:
        imported = set_image_size(imported, image_size)
    check_model(imported)
    checkpoint.save(output, imported.variables)
    return imported


def describe(imported: Imported, output: str | Path) -> str:
    """What was written and the settings that make the pipeline build the same model, as printed lines."""
    model = imported.model
    if model["name"] == "vit":
        arch = (f"ViT: patch {model['patch_size']}, width {model['hidden_size']}, {model['num_layers']} layers, "
                f"{model['num_heads']} heads, MLP {model['mlp_dim']}, LayerNorm eps {model['layernorm_epsilon']:g}"
                f"{', pre-logits ' + str(model['representation_size']) if 'representation_size' in model else ''}; "
                f"{model['image_size']}x{model['image_size']} input")
    else:
        arch = f"ResNet-18: width {model['width']}"
    flags = " ".join(f"--config.model.{k}={v}" for k, v in model_settings(imported).items())
    lines = [f"wrote {output} from {imported.source}",
             f"  {arch}, {imported.in_channels} input channel(s), {imported.num_classes} classes"]
    lines += [f"  note: {note}" for note in imported.notes]
    lines += ["run the pipeline from it with a dataset of "
              f"{imported.num_classes} classes and {imported.in_channels} channel(s):",
              f"  --config.original_checkpoint={output} {flags}"]
    return "\n".join(lines)


def parse_args(argv: list[str]) -> flags.FlagValues:
    """The command line, parsed by absl flags (as `lotus_jax.main`); an error is one line and exit 1."""
    fv = flags.FlagValues()
    flags.DEFINE_string("input", None, "checkpoint file or Hugging Face folder", flag_values=fv, required=True)
    flags.DEFINE_string("output", None, "orbax checkpoint folder to write", flag_values=fv, required=True)
    flags.DEFINE_enum("format", "auto", FORMATS, "input format", flag_values=fv)
    flags.DEFINE_integer("num_classes", None, "replace the head by a new one for this many classes", flag_values=fv)
    flags.DEFINE_enum("head_init", "zeros", HEAD_INITS, "initialisation of a new head", flag_values=fv)
    flags.DEFINE_integer("seed", 0, "PRNG seed of a LeCun-initialised head", flag_values=fv)
    flags.DEFINE_integer("image_size", None, "ViT input resolution (resamples the position embedding)",
                         flag_values=fv)
    flags.DEFINE_integer("num_heads", None, "attention heads of a torchvision ViT (not in its file)", flag_values=fv)
    usage = ("usage: python -m lotus_jax.convert --input=<file or folder> --output=<folder> "
             f"[--format={'|'.join(FORMATS)}] [--num_classes=N [--head_init={'|'.join(HEAD_INITS)}] [--seed=N]] "
             "[--image_size=N] [--num_heads=N]")
    if {"--help", "-h", "--helpfull"} & set(argv):
        print(f"{usage}\n\n{fv.get_help()}")
        sys.exit(0)
    try:
        fv(["python -m lotus_jax.convert", *argv])
        fv.validate_all_flags()
    except flags.Error as e:
        print(f"error: {str(e).splitlines()[0]}\n{usage}", file=sys.stderr)
        sys.exit(1)
    return fv


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        imported = convert(args.input, args.output, args.format, args.num_classes, args.image_size,
                           args.num_heads, args.head_init, args.seed)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(describe(imported, Path(args.output).absolute()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
