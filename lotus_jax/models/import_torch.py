"""Import of torch checkpoints without torch: torchvision ``vit_b_16``-style ViTs and the reference ResNet-18.

``read_pth`` reads files written by ``torch.save`` (the zip serialisation of torch >= 1.6 and the older
stream serialisation) with a restricted unpickler that rebuilds tensors as numpy arrays and refuses any
other pickled class, so no code from the file runs.

The module also holds what every importer shares: ``Imported`` (converted variables plus the model
settings that rebuild the architecture), ``Weights`` (a flat name -> array map consumed key by key so that
missing, unknown and mis-shaped keys are reported by name) and the torch -> Flax layout conversions.
"""
from __future__ import annotations

import collections
import dataclasses
import io
import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

from lotus_jax.errors import ConfigError

Array = np.ndarray

STORAGE_DTYPES: dict[str, Any] = {
    "DoubleStorage": np.float64,
    "FloatStorage": np.float32,
    "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
# Head counts of the standard ViT widths (Ti, S, B, L, H); torch state dicts do not record the head count.
STANDARD_HEADS: dict[int, int] = {192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16}
TORCHVISION_EPS = 1e-6
IMAGENET_NORMALISATION = "mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225)"
RESNET_NORMALISATION_NOTE = ("the file does not record the input normalisation it was trained with: set "
                             "--config.data.mean and --config.data.std to it")


@dataclasses.dataclass(frozen=True)
class Imported:
    """A converted checkpoint.

    ``variables``: {'params': ...} (ViT) or {'params': ..., 'batch_stats': ...} (ResNet-18) of float32 numpy
    arrays under lotus_jax's names. ``model``: the ``config.model`` settings that build this architecture
    (``name`` included; for ViTs also ``image_size``, the input resolution the position embedding fits).
    ``num_classes``: size of the head, None when the checkpoint has none. ``notes``: what the import
    dropped or assumed, one line each.
    """

    variables: dict[str, Any]
    model: dict[str, Any]
    in_channels: int
    num_classes: int | None
    source: str
    notes: tuple[str, ...] = ()


class Weights:
    """Flat checkpoint entries, taken one by one with shape checks; ``finish`` rejects what was not taken.

    ``names`` maps a key to the name shown in messages (the entry's name in the file when the importer
    renamed it).
    """

    def __init__(self, arrays: Mapping[str, Any], source: str, names: Mapping[str, str] | None = None):
        self.arrays = dict(arrays)
        self.source = source
        self.names = dict(names or {})
        self.used: set[str] = set()

    def name(self, key: str) -> str:
        return self.names.get(key, key)

    def has(self, key: str) -> bool:
        return key in self.arrays

    def take(self, key: str, shape: tuple[int, ...] | None = None, ndim: int | None = None) -> Array:
        """The entry as float32; ConfigError when it is absent or its shape differs from ``shape``/``ndim``."""
        if key not in self.arrays:
            raise ConfigError(f"{self.source}: missing key {self.name(key)!r}")
        value = self.arrays[key]
        got = tuple(np.shape(value))
        if shape is not None and got != tuple(shape):
            raise ConfigError(f"{self.source}: key {self.name(key)!r} has shape {got}, expected {tuple(shape)}")
        if ndim is not None and len(got) != ndim:
            raise ConfigError(f"{self.source}: key {self.name(key)!r} has shape {got}, expected {ndim} dimensions")
        self.used.add(key)
        return np.asarray(value, np.float32)

    def skip(self, key: str) -> None:
        """Marks an entry as deliberately unused."""
        self.used.add(key)

    def finish(self, what: str) -> None:
        """ConfigError naming the first entry that no rule took."""
        for key in self.arrays:
            if key not in self.used:
                raise ConfigError(f"{self.source}: unknown key {self.name(key)!r} (not part of {what})")


def linear(weight: Array) -> Array:
    """torch Linear weight (out, in) -> Flax Dense kernel (in, out)."""
    return np.ascontiguousarray(weight.T)


def conv(weight: Array) -> Array:
    """torch Conv2d weight (out, in, kh, kw) -> Flax Conv kernel (kh, kw, in, out)."""
    return np.ascontiguousarray(weight.transpose(2, 3, 1, 0))


def layer_norm(w: Weights, prefix: str, width: int) -> dict[str, Array]:
    """torch LayerNorm ``prefix.weight``/``prefix.bias`` -> Flax {'scale', 'bias'}."""
    return {"scale": w.take(f"{prefix}.weight", (width,)), "bias": w.take(f"{prefix}.bias", (width,))}


def dense(w: Weights, prefix: str, fan_in: int, fan_out: int, bias: bool = True) -> dict[str, Array]:
    """torch Linear ``prefix.weight``/``prefix.bias`` -> Flax Dense {'kernel', 'bias'}."""
    b = w.take(f"{prefix}.bias", (fan_out,)) if bias else np.zeros(fan_out, np.float32)
    return {"kernel": linear(w.take(f"{prefix}.weight", (fan_out, fan_in))), "bias": b}


def attention(q: tuple[Array, Array], k: tuple[Array, Array], v: tuple[Array, Array], out: tuple[Array, Array],
              heads: int) -> dict[str, dict[str, Array]]:
    """torch (weight, bias) pairs of the q/k/v/output projections -> Flax MultiHeadDotProductAttention.

    torch splits a projection's output features head-major (feature = head * head_dim + e), so the Flax
    kernels are the transposed weights reshaped to (D, heads, head_dim) and, for ``out``, (heads, head_dim, D).
    """
    width = out[0].shape[0]
    head_dim = width // heads
    params = {
        name: {"kernel": linear(wt).reshape(width, heads, head_dim), "bias": b.reshape(heads, head_dim)}
        for name, (wt, b) in (("query", q), ("key", k), ("value", v))
    }
    params["out"] = {"kernel": linear(out[0]).reshape(heads, head_dim, width), "bias": out[1]}
    return params


def vit_settings(patch: int, hidden: int, layers: int, heads: int, mlp: int, eps: float, image_size: int,
                 representation_size: int | None) -> dict[str, Any]:
    """``config.model`` settings of a ViT (see lotus_jax.models.build_model)."""
    settings: dict[str, Any] = dict(name="vit", patch_size=patch, hidden_size=hidden, num_layers=layers,
                                    num_heads=heads, mlp_dim=mlp, layernorm_epsilon=float(eps))
    if representation_size is not None:
        settings["representation_size"] = representation_size
    settings["image_size"] = image_size
    return settings


def grid_size(length: int, with_class_token: bool, key: str, source: str) -> int:
    """Side of the square patch grid of a position embedding with ``length`` entries."""
    patches = length - 1 if with_class_token else length
    side = int(round(patches ** 0.5))
    if side < 1 or side * side != patches:
        extra = " plus a class-token entry" if with_class_token else ""
        raise ConfigError(f"{source}: key {key!r} has {length} positions, not a square grid{extra}")
    return side


def block_indices(keys: Any, pattern: str, source: str) -> int:
    """Number of encoder blocks: 1 + the largest index captured by ``pattern`` (a gap is a missing key later)."""
    found = {int(m.group(1)) for m in (re.match(pattern, k) for k in keys) if m}
    if not found:
        raise ConfigError(f"{source}: no encoder blocks found (no key matches {pattern!r})")
    return max(found) + 1


def infer_heads(hidden: int, num_heads: int | None, source: str) -> tuple[int, str | None]:
    """Head count: the given one, else the standard ViT's for this width; with a note when inferred."""
    if num_heads is not None:
        if num_heads < 1 or hidden % num_heads:
            raise ConfigError(f"{source}: num_heads {num_heads} does not divide the width {hidden}")
        return num_heads, None
    if hidden not in STANDARD_HEADS:
        raise ConfigError(f"{source}: the checkpoint does not record the number of attention heads and width "
                          f"{hidden} is not a standard ViT width ({sorted(STANDARD_HEADS)}); pass --num_heads")
    heads = STANDARD_HEADS[hidden]
    return heads, f"num_heads={heads} assumed (standard for width {hidden}); pass --num_heads if it differs"


class _Storage:
    """Placeholder for a torch storage: data is read after unpickling (the legacy format stores it last)."""

    def __init__(self, key: str, dtype: Any, offset: int = 0):
        self.key, self.dtype, self.offset = key, np.dtype(dtype), offset


class _Tensor:
    """A tensor to rebuild once storages are read: torch's (storage, offset, size, stride) view."""

    def __init__(self, storage: _Storage, offset: int, size: tuple[int, ...], stride: tuple[int, ...]):
        self.storage, self.offset, self.size, self.stride = storage, int(offset), tuple(size), tuple(stride)


def _rebuild_tensor(storage: _Storage, offset: int, size: tuple, stride: tuple, *args: Any) -> _Tensor:
    return _Tensor(storage, offset, size, stride)


def _rebuild_parameter(data: Any, *args: Any) -> Any:
    return data


class _StorageType:
    def __init__(self, name: str):
        self.dtype = STORAGE_DTYPES[name]


_ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch", "Size"): tuple,
}


class _Unpickler(pickle.Unpickler):
    """Unpickler that knows only plain containers, tensors, parameters and storages."""

    def __init__(self, file: Any, source: str, legacy: bool):
        super().__init__(file)
        self.source, self.legacy = source, legacy
        self.storages: dict[str, _Storage] = {}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(name)
        raise ConfigError(f"{self.source}: unsupported pickled object {module}.{name} (only tensors and "
                          f"containers of tensors can be read)")

    def persistent_load(self, pid: Any) -> _Storage:
        if not isinstance(pid, tuple) or not pid or pid[0] != "storage":
            raise ConfigError(f"{self.source}: unsupported persistent id {pid!r}")
        storage_type, key = pid[1], str(pid[2])
        if not isinstance(storage_type, _StorageType):
            raise ConfigError(f"{self.source}: unsupported storage type {storage_type!r}")
        view = pid[5] if self.legacy and len(pid) > 5 else None
        if view is not None:
            view_key, offset, _ = view
            key_view = str(view_key)
            if key_view not in self.storages:
                self.storages[key_view] = _Storage(key, storage_type.dtype, int(offset))
            return self.storages[key_view]
        if key not in self.storages:
            self.storages[key] = _Storage(key, storage_type.dtype)
        return self.storages[key]


def _materialise(obj: Any, buffers: Mapping[str, Array], source: str) -> Any:
    """Replaces every ``_Tensor`` in a container tree by a contiguous numpy array."""
    if isinstance(obj, _Tensor):
        flat = buffers[obj.storage.key][obj.storage.offset:]
        numel = int(np.prod(obj.size, dtype=np.int64))
        end = obj.offset + sum((n - 1) * s for n, s in zip(obj.size, obj.stride)) + 1
        if numel and (obj.offset < 0 or end > flat.size or min(obj.stride, default=0) < 0):
            raise ConfigError(f"{source}: a tensor of shape {obj.size} points outside its storage")
        if not numel:
            return np.zeros(obj.size, flat.dtype)
        item = flat.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(flat[obj.offset:], obj.size, [s * item for s in obj.stride])
        return np.array(view)
    if isinstance(obj, dict):
        return type(obj)((k, _materialise(v, buffers, source)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_materialise(v, buffers, source) for v in obj)
    return obj


def _read_zip(path: Path, source: str) -> Any:
    with zipfile.ZipFile(path) as archive:
        pickles = [n for n in archive.namelist() if n.endswith("data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            raise ConfigError(f"{source}: not a torch.save archive (no single <name>/data.pkl)")
        prefix = pickles[0][: -len("data.pkl")]
        names = set(archive.namelist())
        order = "little"
        if prefix + "byteorder" in names:
            order = archive.read(prefix + "byteorder").decode().strip()
        unpickler = _Unpickler(io.BytesIO(archive.read(pickles[0])), source, legacy=False)
        obj = unpickler.load()
        buffers = {}
        for storage in unpickler.storages.values():
            name = f"{prefix}data/{storage.key}"
            if name not in names:
                raise ConfigError(f"{source}: missing storage record {name}")
            dtype = storage.dtype.newbyteorder("<" if order == "little" else ">")
            buffers[storage.key] = np.frombuffer(archive.read(name), dtype).astype(storage.dtype)
    return _materialise(obj, buffers, source)


def _read_legacy(path: Path, source: str) -> Any:
    stream = io.BytesIO(path.read_bytes())
    try:
        magic = _Unpickler(stream, source, legacy=True).load()
    except (pickle.UnpicklingError, EOFError, ValueError) as e:
        raise ConfigError(f"{source}: not a torch checkpoint ({e})") from None
    if magic != LEGACY_MAGIC:
        raise ConfigError(f"{source}: not a torch checkpoint (no torch.save magic number)")
    _Unpickler(stream, source, legacy=True).load()  # protocol version
    _Unpickler(stream, source, legacy=True).load()  # system info
    unpickler = _Unpickler(stream, source, legacy=True)
    obj = unpickler.load()
    keys = _Unpickler(stream, source, legacy=True).load()
    dtypes = {s.key: s.dtype for s in unpickler.storages.values()}
    buffers = {}
    for key in keys:
        count = int(np.frombuffer(stream.read(8), "<i8")[0])
        dtype = dtypes.get(str(key), np.dtype(np.uint8))
        data = stream.read(count * dtype.itemsize)
        if len(data) != count * dtype.itemsize:
            raise ConfigError(f"{source}: truncated storage {key}")
        buffers[str(key)] = np.frombuffer(data, dtype.newbyteorder("<")).astype(dtype)
    missing = set(dtypes) - set(buffers)
    if missing:
        raise ConfigError(f"{source}: missing storage {sorted(missing)[0]}")
    return _materialise(obj, buffers, source)


def read_pth(path: str | Path) -> Any:
    """The object saved by ``torch.save`` at ``path``, with tensors as numpy arrays (no torch needed)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"missing file {path}")
    source = str(path)
    return _read_zip(path, source) if zipfile.is_zipfile(path) else _read_legacy(path, source)


def state_dict_of(obj: Any, source: str) -> dict[str, Array]:
    """The flat name -> array map inside a loaded checkpoint.

    Accepts a state dict, or a dict holding one under 'state_dict', 'model_state_dict', 'model' or 'net'
    (training checkpoints); strips the 'module.' prefix that DataParallel adds.
    """
    def is_state(d: Any) -> bool:
        return isinstance(d, dict) and bool(d) and all(isinstance(v, np.ndarray) for v in d.values())

    if not is_state(obj) and isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model", "net"):
            if is_state(obj.get(key)):
                obj = obj[key]
                break
    if not is_state(obj):
        found = sorted(map(str, obj))[:8] if isinstance(obj, dict) else type(obj).__name__
        raise ConfigError(f"{source}: no state dict (a dict of tensors) found; top level: {found}")
    state = {str(k): v for k, v in obj.items()}
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def import_torchvision_vit(state: Mapping[str, Array], source: str, num_heads: int | None = None) -> Imported:
    """torchvision ``VisionTransformer`` state dict (e.g. ``vit_b_16``) -> lotus_jax ViT variables.

    Keys: conv_proj, class_token, encoder.pos_embedding, encoder.layers.encoder_layer_N.{ln_1,
    self_attention.{in_proj_weight, in_proj_bias, out_proj}, ln_2, mlp.0 | mlp.linear_1, mlp.3 |
    mlp.linear_2}, encoder.ln, heads.head and optional heads.pre_logits. LayerNorm eps 1e-6. The head count
    is not stored: ``num_heads`` or the standard one for the width.
    """
    w = Weights(state, source)
    proj = w.take("conv_proj.weight", ndim=4)
    hidden, channels, patch, patch_w = proj.shape
    if patch != patch_w:
        raise ConfigError(f"{source}: key 'conv_proj.weight' has non-square patches {proj.shape[2:]}")
    heads, note = infer_heads(hidden, num_heads, source)
    pos = w.take("encoder.pos_embedding", ndim=3)
    w.take("encoder.pos_embedding", (1, pos.shape[1], hidden))
    grid = grid_size(pos.shape[1], True, "encoder.pos_embedding", source)
    layers = block_indices(w.arrays, r"encoder\.layers\.encoder_layer_(\d+)\.", source)
    first = "encoder.layers.encoder_layer_0.mlp."
    fc1, fc2 = ("mlp.0", "mlp.3") if w.has(first + "0.weight") else ("mlp.linear_1", "mlp.linear_2")
    mlp = w.take(f"encoder.layers.encoder_layer_0.{fc1}.weight", ndim=2).shape[0]
    params: dict[str, Any] = {
        "embedding": {"kernel": conv(proj), "bias": w.take("conv_proj.bias", (hidden,))},
        "cls": w.take("class_token", (1, 1, hidden)),
    }
    encoder: dict[str, Any] = {"posembed_input": {"pos_embedding": pos}}
    for i in range(layers):
        p = f"encoder.layers.encoder_layer_{i}."
        qkv_w = w.take(p + "self_attention.in_proj_weight", (3 * hidden, hidden))
        qkv_b = w.take(p + "self_attention.in_proj_bias", (3 * hidden,))
        parts = [(qkv_w[j * hidden:(j + 1) * hidden], qkv_b[j * hidden:(j + 1) * hidden]) for j in range(3)]
        out = (w.take(p + "self_attention.out_proj.weight", (hidden, hidden)),
               w.take(p + "self_attention.out_proj.bias", (hidden,)))
        encoder[f"encoderblock_{i}"] = {
            "LayerNorm_0": layer_norm(w, p + "ln_1", hidden),
            "MultiHeadDotProductAttention_1": attention(*parts, out, heads),
            "LayerNorm_2": layer_norm(w, p + "ln_2", hidden),
            "MlpBlock_3": {"Dense_0": dense(w, p + fc1, hidden, mlp), "Dense_1": dense(w, p + fc2, mlp, hidden)},
        }
    encoder["encoder_norm"] = layer_norm(w, "encoder.ln", hidden)
    params["Transformer"] = encoder
    features, representation = hidden, None
    if w.has("heads.pre_logits.weight"):
        representation = w.take("heads.pre_logits.weight", ndim=2).shape[0]
        params["pre_logits"] = dense(w, "heads.pre_logits", hidden, representation)
        features = representation
    num_classes = None
    if w.has("heads.head.weight"):
        num_classes = w.take("heads.head.weight", ndim=2).shape[0]
        params["head"] = dense(w, "heads.head", features, num_classes)
    w.finish("a torchvision VisionTransformer")
    notes = [f"torchvision's ImageNet weights expect inputs normalised with {IMAGENET_NORMALISATION}"]
    if note:
        notes.insert(0, note)
    settings = vit_settings(patch, hidden, layers, heads, mlp, TORCHVISION_EPS, grid * patch, representation)
    return Imported({"params": params}, settings, channels, num_classes, source, tuple(notes))


def _batch_norm(w: Weights, prefix: str, width: int) -> tuple[dict[str, Array], dict[str, Array]]:
    """torch BatchNorm2d -> (Flax params {'scale', 'bias'}, batch_stats {'mean', 'var'})."""
    w.skip(f"{prefix}.num_batches_tracked")
    params = {"scale": w.take(f"{prefix}.weight", (width,)), "bias": w.take(f"{prefix}.bias", (width,))}
    stats = {"mean": w.take(f"{prefix}.running_mean", (width,)), "var": w.take(f"{prefix}.running_var", (width,))}
    return params, stats


def import_resnet18(state: Mapping[str, Array], source: str) -> Imported:
    """Reference CIFAR ResNet-18 state dict -> lotus_jax ResNet18 variables (params and batch_stats).

    Keys: conv1, bn1, layerS.B.{conv1, bn1, conv2, bn2, identity_conv} (S = 1..4, B = 0, 1), fc; every
    convolution without bias. The width is conv1's output channel count.
    """
    w = Weights(state, source)
    stem = w.take("conv1.weight", ndim=4)
    width, channels = stem.shape[:2]
    if tuple(stem.shape[2:]) != (3, 3) and "fc.weight" in state and "layer1.0.downsample.0.weight" in state:
        raise ConfigError(f"{source}: a {stem.shape[2]}x{stem.shape[3]} first convolution and torchvision's key "
                          f"names: this is torchvision's ImageNet ResNet-18; lotus_jax's ResNet-18 is the CIFAR "
                          f"variant of the reference code (3x3 first convolution): convert weights of that one")
    w.take("conv1.weight", (width, channels, 3, 3))
    params: dict[str, Any] = {"conv1": {"kernel": conv(stem)}}
    stats: dict[str, Any] = {}
    params["bn1"], stats["bn1"] = _batch_norm(w, "bn1", width)
    cin = width
    for stage, (mult, _) in enumerate(zip((1, 2, 4, 8), (1, 2, 2, 2)), start=1):
        cout = width * mult
        for index in range(2):
            p, name = f"layer{stage}.{index}.", f"layer{stage}_{index}"
            block = {
                "conv1": {"kernel": conv(w.take(p + "conv1.weight", (cout, cin, 3, 3)))},
                "conv2": {"kernel": conv(w.take(p + "conv2.weight", (cout, cout, 3, 3)))},
                "identity_conv": {"kernel": conv(w.take(p + "identity_conv.weight", (cout, cin, 1, 1)))},
            }
            block_stats = {}
            block["bn1"], block_stats["bn1"] = _batch_norm(w, p + "bn1", cout)
            block["bn2"], block_stats["bn2"] = _batch_norm(w, p + "bn2", cout)
            params[name], stats[name] = block, block_stats
            cin = cout
    num_classes = w.take("fc.weight", ndim=2).shape[0]
    params["fc"] = dense(w, "fc", cin, num_classes)
    w.finish("the reference ResNet-18")
    return Imported({"params": params, "batch_stats": stats}, dict(name="resnet18", width=int(width)),
                    int(channels), int(num_classes), source, (RESNET_NORMALISATION_NOTE,))
