"""Tests of pretrained-weight import (lotus_jax.convert and lotus_jax/models/import_*.py).

The tiny checkpoints and their torch logits in tests/models/fixtures/ are made by
experiments/make_import_fixtures.py (needs torch; these tests do not). The full-size ViT-B/16 test builds
random torchvision-layout weights with numpy and compares against a numpy forward pass of that graph.
"""
import io
import json
import pickle
import shutil
import zipfile
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import ml_dtypes
import numpy as np
import pytest
import scipy.ndimage
import scipy.special
from absl import flags
from ml_collections import config_flags

from lotus_jax import checkpoint, convert
from lotus_jax.config import base_config
from lotus_jax.data import make_mesh
from lotus_jax.errors import ConfigError
from lotus_jax.models import build_model, import_hf, import_npz
from lotus_jax.models.import_torch import import_resnet18, import_torchvision_vit, read_pth, state_dict_of

FIXTURES = Path(__file__).resolve().parent / "fixtures"
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def reference() -> dict[str, np.ndarray]:
    with np.load(FIXTURES / "reference_logits.npz") as npz:
        return {k: npz[k] for k in npz.files}


def _relative_error(got: np.ndarray, want: np.ndarray) -> float:
    """max |got - want| / max |want|."""
    return float(np.max(np.abs(np.asarray(got) - want)) / np.max(np.abs(want)))


def _model(imported: convert.Imported):
    return build_model(ml_collections.ConfigDict(convert.model_settings(imported)), imported.num_classes,
                       jnp.float32)


def _logits(imported: convert.Imported, x: np.ndarray) -> np.ndarray:
    model = _model(imported)
    return np.asarray(jax.jit(lambda v, inputs: model.apply(v, inputs, train=False))(imported.variables, x))


def _torchvision_state() -> dict[str, np.ndarray]:
    return state_dict_of(read_pth(FIXTURES / "torchvision_vit_tiny.pth"), "fixture")


@pytest.mark.parametrize("name", ["torchvision_vit_tiny.pth", "torchvision_vit_tiny_legacy.pth"])
def test_torchvision_vit_matches_torch(reference, name):
    imported = convert.load(FIXTURES / name, num_heads=2)
    assert imported.model == dict(name="vit", patch_size=4, hidden_size=8, num_layers=2, num_heads=2, mlp_dim=16,
                                  layernorm_epsilon=1e-6, image_size=8)
    assert _relative_error(_logits(imported, reference["vit_inputs"]), reference["torchvision_vit"]) < TOLERANCE


@pytest.mark.parametrize("name", ["hf_vit_tiny", "hf_vit_tiny/pytorch_model.bin"])
def test_hugging_face_vit_matches_torch(reference, name):
    imported = convert.load(FIXTURES / name)
    assert imported.model["layernorm_epsilon"] == 1e-12
    assert imported.num_classes == 3
    assert _relative_error(_logits(imported, reference["vit_inputs"]), reference["hf_vit"]) < TOLERANCE


@pytest.mark.parametrize("name", ["vit_tiny.npz", "big_vision_vit_tiny.npz"])
def test_npz_vit_matches_torch(reference, name):
    """Both .npz files hold the torchvision fixture's function under vision_transformer / big_vision names."""
    imported = convert.load(FIXTURES / name)
    assert imported.model["num_heads"] == 2 and imported.model["layernorm_epsilon"] == 1e-6
    assert _relative_error(_logits(imported, reference["vit_inputs"]), reference["torchvision_vit"]) < TOLERANCE


def test_scanned_big_vision_npz(reference, tmp_path):
    """A scanned encoder (one stacked entry per parameter) converts to the same model."""
    arrays = import_npz.load(FIXTURES / "big_vision_vit_tiny.npz")
    stacked = {k: v for k, v in arrays.items() if "/encoderblock_" not in k}
    for key in [k for k in arrays if "/encoderblock_0/" in k]:
        stacked[key.replace("encoderblock_0", "encoderblock")] = np.stack(
            [arrays[key], arrays[key.replace("encoderblock_0", "encoderblock_1")]])
    np.savez(tmp_path / "scanned.npz", **stacked)
    imported = convert.load(tmp_path / "scanned.npz")
    assert any("unstacked" in note for note in imported.notes)
    assert _relative_error(_logits(imported, reference["vit_inputs"]), reference["torchvision_vit"]) < TOLERANCE


def test_resnet18_matches_torch(reference):
    imported = convert.load(FIXTURES / "resnet18_tiny.pth")
    assert imported.model == dict(name="resnet18", width=2)
    assert set(imported.variables) == {"params", "batch_stats"}
    assert _relative_error(_logits(imported, reference["resnet_inputs"]), reference["resnet18"]) < TOLERANCE


def test_torch_free_readers_agree():
    """zip and legacy .pth serialisations, and safetensors vs .bin, give the same arrays and dtypes."""
    zipped, legacy = (read_pth(FIXTURES / n) for n in ("torchvision_vit_tiny.pth", "torchvision_vit_tiny_legacy.pth"))
    assert list(zipped) == list(legacy)
    for key in zipped:
        np.testing.assert_array_equal(zipped[key], legacy[key])
        assert zipped[key].dtype == np.float32
    safetensors = import_hf.read_safetensors(FIXTURES / "hf_vit_tiny" / "model.safetensors")
    binary = read_pth(FIXTURES / "hf_vit_tiny" / "pytorch_model.bin")
    assert set(safetensors) == set(binary)
    for key in binary:
        np.testing.assert_array_equal(safetensors[key], binary[key])
    resnet = read_pth(FIXTURES / "resnet18_tiny.pth")
    assert resnet["bn1.num_batches_tracked"].dtype == np.int64


def _write_safetensors(path: Path, arrays: dict[str, np.ndarray], dtype_name: str) -> None:
    """Minimal safetensors writer: 8-byte little-endian header size, JSON header, concatenated data."""
    header, blobs, offset = {}, [], 0
    for key, value in arrays.items():
        data = np.ascontiguousarray(value).tobytes()
        header[key] = {"dtype": dtype_name, "shape": list(value.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header).encode()
    path.write_bytes(np.uint64(len(text)).tobytes() + text + b"".join(blobs))


def test_bfloat16_checkpoints(tmp_path):
    """bfloat16 tensors (.pth storages, safetensors BF16) are read exactly and widened to float32."""
    exact = convert.load(FIXTURES / "torchvision_vit_tiny.pth", num_heads=2).variables
    raw = read_pth(FIXTURES / "torchvision_vit_tiny_bf16.pth")
    assert raw["class_token"].dtype == ml_dtypes.bfloat16
    rounded = convert.load(FIXTURES / "torchvision_vit_tiny_bf16.pth", num_heads=2).variables
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a.astype(ml_dtypes.bfloat16).astype(np.float32), b),
                 exact, rounded)
    folder = tmp_path / "hf"
    folder.mkdir()
    shutil.copy(FIXTURES / "hf_vit_tiny" / "config.json", folder)
    state = import_hf.read_safetensors(FIXTURES / "hf_vit_tiny" / "model.safetensors")
    _write_safetensors(folder / "model.safetensors", {k: v.astype(ml_dtypes.bfloat16) for k, v in state.items()},
                       "BF16")
    read = import_hf.read_safetensors(folder / "model.safetensors")
    for key, value in state.items():
        np.testing.assert_array_equal(read[key], value.astype(ml_dtypes.bfloat16))
    imported = convert.load(folder)
    assert jax.tree.leaves(imported.variables)[0].dtype == np.float32


def test_hugging_face_vit_model_without_classifier():
    """A ViTModel checkpoint (no 'vit.' prefix, pooler, no classifier) needs a new head; the pooler is dropped."""
    state, config, _ = import_hf.load(FIXTURES / "hf_vit_tiny")
    reference = import_hf.import_hf_vit(state, config, "fixture")
    backbone = {k[len("vit."):]: v for k, v in state.items() if k.startswith("vit.")}
    backbone["pooler.dense.weight"], backbone["pooler.dense.bias"] = np.eye(8, dtype=np.float32), np.zeros(8)
    imported = import_hf.import_hf_vit(backbone, config, "fixture")
    assert imported.num_classes is None and "head" not in imported.variables["params"]
    assert any("pooler.dense.weight" in note for note in imported.notes)
    with pytest.raises(ConfigError, match="no classification head; pass --num_classes"):
        convert.check_model(imported)
    replaced = convert.replace_head(imported, 7)
    convert.check_model(replaced)
    params = dict(replaced.variables["params"])
    np.testing.assert_array_equal(params.pop("head")["kernel"], np.zeros((8, 7)))
    expected = dict(reference.variables["params"])
    expected.pop("head")
    jax.tree.map(np.testing.assert_array_equal, params, expected)


def test_head_replacement_and_pre_logits(reference, tmp_path):
    arrays = import_npz.load(FIXTURES / "vit_tiny.npz")
    rng = np.random.default_rng(0)
    arrays["pre_logits/kernel"] = rng.normal(size=(8, 6)).astype(np.float32)
    arrays["pre_logits/bias"] = np.zeros(6, np.float32)
    arrays["head/kernel"] = rng.normal(size=(6, 5)).astype(np.float32)
    imported = import_npz.import_npz_vit(arrays, "fixture")
    assert imported.model["representation_size"] == 6
    convert.check_model(imported)
    zero = convert.replace_head(imported, 4)
    assert "pre_logits" not in zero.variables["params"] and "representation_size" not in zero.model
    np.testing.assert_array_equal(_logits(zero, reference["vit_inputs"]), np.zeros((4, 4)))
    lecun = convert.replace_head(imported, 300, "lecun", seed=1)
    kernel = lecun.variables["params"]["head"]["kernel"]
    assert kernel.shape == (8, 300) and abs(kernel.std() * np.sqrt(8) - 1) < 0.1
    resnet = convert.replace_head(convert.load(FIXTURES / "resnet18_tiny.pth"), 9)
    assert resnet.variables["params"]["fc"]["kernel"].shape == (16, 9)
    convert.check_model(resnet)


def test_position_embedding_resampling(reference):
    rng = np.random.default_rng(0)
    pos = rng.normal(size=(1, 1 + 16, 3)).astype(np.float32)
    np.testing.assert_allclose(convert.resize_position_embedding(pos, 4), pos, atol=1e-6)
    resized = convert.resize_position_embedding(pos, 7)
    assert resized.shape == (1, 1 + 49, 3)
    np.testing.assert_array_equal(resized[:, 0], pos[:, 0])
    grid = pos[0, 1:].reshape(4, 4, 3).astype(np.float64)
    expected = scipy.ndimage.zoom(grid, (7 / 4, 7 / 4, 1), order=1)
    np.testing.assert_allclose(resized[0, 1:].reshape(7, 7, 3), expected, atol=1e-5)
    imported = convert.set_image_size(convert.load(FIXTURES / "torchvision_vit_tiny.pth", num_heads=2), 12)
    assert imported.model["image_size"] == 12
    assert imported.variables["params"]["Transformer"]["posembed_input"]["pos_embedding"].shape == (1, 10, 8)
    convert.check_model(imported)
    assert _logits(imported, np.zeros((2, 12, 12, 3), np.float32)).shape == (2, 5)
    with pytest.raises(ConfigError, match="not a positive multiple of the patch size 4"):
        convert.set_image_size(imported, 10)
    with pytest.raises(ConfigError, match="only applies to ViT"):
        convert.set_image_size(convert.load(FIXTURES / "resnet18_tiny.pth"), 16)


@pytest.mark.parametrize("name, logits", [("hf_vit_tiny", "hf_vit"), ("resnet18_tiny.pth", "resnet18")])
def test_pipeline_restores_converted_checkpoint(reference, tmp_path, capsys, name, logits):
    """The command writes a checkpoint that checkpoint.restore loads into the model that the printed
    --config.model.* settings build from the base config, with the source framework's logits."""
    out = tmp_path / "ckpt"
    assert convert.main(["--input", str(FIXTURES / name), "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"--config.original_checkpoint={out}" in printed
    command_line = printed.split("\n  --config.original_checkpoint=")[1].split("\n")[0]
    argv = ["main", *f"--config.original_checkpoint={command_line}".split()]
    flag_values = flags.FlagValues()
    config_flags.DEFINE_config_dict("config", base_config(), flag_values=flag_values, sys_argv=argv)
    flag_values(argv)
    cfg = flag_values.config
    assert cfg.original_checkpoint == str(out)
    want = reference[logits]
    x = reference["resnet_inputs" if logits == "resnet18" else "vit_inputs"]
    model = build_model(cfg.model, want.shape[1], jnp.float32)
    like = jax.eval_shape(lambda inputs: model.init({"params": jax.random.key(0)}, inputs, train=False), x[:1])
    variables = checkpoint.restore(out, like, make_mesh(1))
    got = jax.jit(lambda v, inputs: model.apply(v, inputs, train=False))(variables, x)
    assert _relative_error(got, want) < TOLERANCE


def test_command_with_new_head_and_resolution(tmp_path, capsys):
    out = tmp_path / "ckpt"
    argv = ["--input", str(FIXTURES / "vit_tiny.npz"), "--output", str(out), "--num_classes", "7",
            "--image_size", "12", "--format", "npz"]
    assert convert.main(argv) == 0
    printed = capsys.readouterr().out
    assert "--config.model.image_size=12" in printed and "7 classes" in printed
    assert checkpoint.exists(out)
    assert convert.main(argv) == 0  # an existing checkpoint is replaced


def _fake_vit_b16(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Random torchvision vit_b_16 state dict: weights N(0, 1/fan_in), LayerNorm scales ~1."""
    d, mlp, p, classes = 768, 3072, 16, 1000

    def normal(*shape, scale=1.0):
        return (scale * rng.standard_normal(shape, dtype=np.float32)).astype(np.float32)

    state = {"class_token": normal(1, 1, d, scale=0.1), "encoder.pos_embedding": normal(1, 197, d, scale=0.1),
             "conv_proj.weight": normal(d, 3, p, p, scale=(3 * p * p) ** -0.5), "conv_proj.bias": normal(d, scale=0.1),
             "encoder.ln.weight": 1 + normal(d, scale=0.1), "encoder.ln.bias": normal(d, scale=0.1),
             "heads.head.weight": normal(classes, d, scale=d ** -0.5), "heads.head.bias": normal(classes, scale=0.1)}
    for i in range(12):
        pre = f"encoder.layers.encoder_layer_{i}."
        state.update({
            pre + "ln_1.weight": 1 + normal(d, scale=0.1), pre + "ln_1.bias": normal(d, scale=0.1),
            pre + "self_attention.in_proj_weight": normal(3 * d, d, scale=d ** -0.5),
            pre + "self_attention.in_proj_bias": normal(3 * d, scale=0.1),
            pre + "self_attention.out_proj.weight": normal(d, d, scale=d ** -0.5),
            pre + "self_attention.out_proj.bias": normal(d, scale=0.1),
            pre + "ln_2.weight": 1 + normal(d, scale=0.1), pre + "ln_2.bias": normal(d, scale=0.1),
            pre + "mlp.0.weight": normal(mlp, d, scale=d ** -0.5), pre + "mlp.0.bias": normal(mlp, scale=0.1),
            pre + "mlp.3.weight": normal(d, mlp, scale=mlp ** -0.5), pre + "mlp.3.bias": normal(d, scale=0.1),
        })
    return state


def _torchvision_forward(state: dict[str, np.ndarray], x: np.ndarray, heads: int, eps: float = 1e-6) -> np.ndarray:
    """torchvision VisionTransformer forward in numpy float32, on NHWC inputs and torch-layout weights."""
    w = state["conv_proj.weight"]
    d, c, p, _ = w.shape
    n, size = x.shape[0], x.shape[1]
    g = size // p
    patches = x.reshape(n, g, p, g, p, c).transpose(0, 1, 3, 5, 2, 4).reshape(n, g * g, c * p * p)
    tokens = patches @ w.reshape(d, c * p * p).T + state["conv_proj.bias"]
    tokens = np.concatenate([np.broadcast_to(state["class_token"], (n, 1, d)), tokens], axis=1)
    tokens = tokens + state["encoder.pos_embedding"]

    def norm(z, prefix):
        mean = z.mean(-1, keepdims=True)
        var = ((z - mean) ** 2).mean(-1, keepdims=True)
        return (z - mean) / np.sqrt(var + eps) * state[prefix + ".weight"] + state[prefix + ".bias"]

    hd = d // heads
    for i in range(sum(k.endswith("ln_1.weight") for k in state)):
        pre = f"encoder.layers.encoder_layer_{i}."
        y = norm(tokens, pre + "ln_1")
        qkv = y @ state[pre + "self_attention.in_proj_weight"].T + state[pre + "self_attention.in_proj_bias"]
        q, k, v = (qkv[..., j * d:(j + 1) * d].reshape(n, -1, heads, hd).transpose(0, 2, 1, 3) for j in range(3))
        scores = q @ k.transpose(0, 1, 3, 2) / np.float32(np.sqrt(hd))
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        mixed = (scores / scores.sum(-1, keepdims=True)) @ v
        mixed = mixed.transpose(0, 2, 1, 3).reshape(n, -1, d)
        out = pre + "self_attention.out_proj."
        tokens = tokens + mixed @ state[out + "weight"].T + state[out + "bias"]
        y = norm(tokens, pre + "ln_2") @ state[pre + "mlp.0.weight"].T + state[pre + "mlp.0.bias"]
        y = (0.5 * y * (1 + scipy.special.erf(y / np.float32(np.sqrt(2))))).astype(np.float32)
        tokens = tokens + y @ state[pre + "mlp.3.weight"].T + state[pre + "mlp.3.bias"]
    cls = norm(tokens, "encoder.ln")[:, 0]
    return cls @ state["heads.head.weight"].T + state["heads.head.bias"]


def test_full_size_vit_b16_matches_numpy_torchvision_graph():
    rng = np.random.default_rng(0)
    state = _fake_vit_b16(rng)
    x = rng.standard_normal((1, 224, 224, 3), dtype=np.float32)
    want = _torchvision_forward(state, x, heads=12)
    imported = import_torchvision_vit(state, "vit_b_16")
    assert convert.model_settings(imported) == dict(name="vit", variant="B/16", patch_size=16, hidden_size=768,
                                                    num_layers=12, num_heads=12, mlp_dim=3072,
                                                    layernorm_epsilon=1e-6, image_size=224)
    assert any("num_heads=12 assumed" in note for note in imported.notes)
    convert.check_model(imported)
    got = _logits(imported, x)
    assert np.abs(want).max() > 1.0
    assert _relative_error(got, want) < TOLERANCE


def test_errors_name_the_key():
    state = _torchvision_state()
    with pytest.raises(ConfigError, match="unknown key 'encoder.extra.weight'"):
        import_torchvision_vit(dict(state, **{"encoder.extra.weight": np.zeros(3)}), "f", 2)
    bad = dict(state, **{"encoder.layers.encoder_layer_1.ln_2.weight": np.zeros(9, np.float32)})
    with pytest.raises(ConfigError, match=r"key 'encoder.layers.encoder_layer_1.ln_2.weight' has shape \(9,\), "
                                          r"expected \(8,\)"):
        import_torchvision_vit(bad, "f", 2)
    missing = {k: v for k, v in state.items() if k != "encoder.layers.encoder_layer_1.mlp.3.bias"}
    with pytest.raises(ConfigError, match="missing key 'encoder.layers.encoder_layer_1.mlp.3.bias'"):
        import_torchvision_vit(missing, "f", 2)
    with pytest.raises(ConfigError, match="pass --num_heads"):
        import_torchvision_vit(state, "f")
    resnet = read_pth(FIXTURES / "resnet18_tiny.pth")
    with pytest.raises(ConfigError, match="unknown key 'conv1.bias'"):
        import_resnet18(dict(resnet, **{"conv1.bias": np.zeros(2, np.float32)}), "f")
    with pytest.raises(ConfigError, match=r"key 'layer3.1.conv2.weight' has shape \(8, 8, 1, 1\)"):
        import_resnet18(dict(resnet, **{"layer3.1.conv2.weight": np.zeros((8, 8, 1, 1), np.float32)}), "f")
    # torchvision's ImageNet ResNet-18 (7x7 stem, downsample keys) is named as such, not as one wrong shape.
    torchvision_like = dict(resnet, **{"conv1.weight": np.zeros((2, 3, 7, 7), np.float32),
                                       "layer1.0.downsample.0.weight": np.zeros((2, 2, 1, 1), np.float32)})
    with pytest.raises(ConfigError, match="this is torchvision's ImageNet ResNet-18; .* CIFAR variant"):
        import_resnet18(torchvision_like, "f")
    assert any("--config.data.mean" in note for note in import_resnet18(resnet, "f").notes)
    arrays = import_npz.load(FIXTURES / "big_vision_vit_tiny.npz")
    key = "params/Transformer/encoderblock_1/MlpBlock_0/Dense_1/bias"
    with pytest.raises(ConfigError, match=f"key '{key}' has shape"):
        import_npz.import_npz_vit(dict(arrays, **{key: np.zeros(3, np.float32)}), "f")
    with pytest.raises(ConfigError, match="no learned position embedding"):
        import_npz.import_npz_vit({k: v for k, v in arrays.items() if not k.endswith("pos_embedding")}, "f")
    without_cls = {k: v for k, v in arrays.items() if k != "params/cls"}
    with pytest.raises(ConfigError, match="no 'cls' class token"):
        import_npz.import_npz_vit(without_cls, "f")
    state_hf, config, _ = import_hf.load(FIXTURES / "hf_vit_tiny")
    key = "vit.encoder.layer.0.attention.attention.value.weight"
    with pytest.raises(ConfigError, match=f"key '{key}' has shape"):
        import_hf.import_hf_vit(dict(state_hf, **{key: np.zeros((8, 4), np.float32)}), config, "f")
    with pytest.raises(ConfigError, match="hidden_act 'gelu_new' is not supported"):
        import_hf.import_hf_vit(state_hf, dict(config, hidden_act="gelu_new"), "f")


def test_help_lists_every_flag_and_a_bad_flag_prints_the_usage(capsys):
    with pytest.raises(SystemExit) as e:
        convert.main(["--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and all(f"--{f}" in out for f in ("input", "output", "format", "num_classes",
                                                                 "head_init", "seed", "image_size", "num_heads"))
    with pytest.raises(SystemExit) as e:
        convert.main(["--bogus=1"])
    err = capsys.readouterr().err
    assert e.value.code == 1 and "Unknown command line flag 'bogus'" in err and "[--num_heads=N]" in err


def test_file_errors(tmp_path, capsys):
    assert convert.main(["--input", str(tmp_path / "absent.pth"), "--output", str(tmp_path / "out")]) == 1
    assert capsys.readouterr().err.strip() == f"error: missing file {tmp_path / 'absent.pth'}"
    lonely = tmp_path / "hf"
    lonely.mkdir()
    shutil.copy(FIXTURES / "hf_vit_tiny" / "model.safetensors", lonely)
    with pytest.raises(ConfigError, match="missing file .*config.json"):
        convert.load(lonely)
    with pytest.raises(ConfigError, match="missing file .*model.safetensors"):
        convert.load(tmp_path)
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    shutil.copy(FIXTURES / "hf_vit_tiny" / "config.json", corrupt)
    state = import_hf.read_safetensors(FIXTURES / "hf_vit_tiny" / "model.safetensors")
    _write_safetensors(corrupt / "model.safetensors", state, "F32")
    data = (corrupt / "model.safetensors").read_bytes()
    (corrupt / "model.safetensors").write_bytes(data[:-4])
    with pytest.raises(ConfigError, match="data offsets .* do not fit shape"):
        convert.load(corrupt)
    malicious = tmp_path / "evil.pth"
    with zipfile.ZipFile(malicious, "w") as archive:
        archive.writestr("evil/data.pkl", pickle.dumps({"x": io.BytesIO(b"")}))
    with pytest.raises(ConfigError, match="unsupported pickled object _io.BytesIO"):
        convert.load(malicious)
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "keep.txt").write_text("data")
    with pytest.raises(ConfigError, match="refusing to overwrite"):
        convert.convert(FIXTURES / "resnet18_tiny.pth", occupied)
    with pytest.raises(ConfigError, match="--num_heads 4 does not fit"):
        convert.load(FIXTURES / "vit_tiny.npz", num_heads=4)
