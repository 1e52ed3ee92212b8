"""Regenerates tests/models/fixtures/: tiny source-framework checkpoints and their logits on fixed inputs.

Needs torch (not a dependency of lotus_jax), e.g. in a separate virtual environment:

    python3 -m venv /tmp/torchvenv && /tmp/torchvenv/bin/pip install torch numpy safetensors
    /tmp/torchvenv/bin/python experiments/make_import_fixtures.py

The torch modules below re-implement, with the same state-dict key names, torchvision's
``VisionTransformer``, Hugging Face's ``ViTForImageClassification`` and the LoTUS reference code's CIFAR
ResNet-18 (docs/definitions.md §7), so neither torchvision nor transformers is needed. Written files:

- ``torchvision_vit_tiny.pth`` (zip serialisation), ``torchvision_vit_tiny_legacy.pth`` (the pre-1.6
  serialisation, whose storage keys, hence bytes, differ between runs) and ``torchvision_vit_tiny_bf16.pth``
  (bfloat16 tensors) of a torchvision-layout ViT;
- ``hf_vit_tiny/{config.json, model.safetensors, pytorch_model.bin}`` of a Hugging Face-layout ViT
  (LayerNorm eps 1e-12);
- ``vit_tiny.npz`` (google-research/vision_transformer names) and ``big_vision_vit_tiny.npz`` (big_vision
  names: ``params/`` prefix, position embedding without a class-token entry) holding the same function as
  the torchvision ViT;
- ``resnet18_tiny.pth`` of the reference ResNet-18 with random BatchNorm statistics;
- ``reference_logits.npz``: the NHWC inputs and torch's eval-mode logits for each model.
"""
from __future__ import annotations

import json
import math
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

OUT = Path(__file__).resolve().parent.parent / "tests" / "models" / "fixtures"
IMAGE, CHANNELS, BATCH = 8, 3, 4
TV = dict(patch=4, hidden=8, layers=2, heads=2, mlp=16, classes=5, eps=1e-6)
HF = dict(patch=4, hidden=8, layers=2, heads=2, mlp=16, classes=3, eps=1e-12)
RESNET = dict(width=2, classes=4)
POSITION_AND_TOKEN = ("pos_embedding", "position_embeddings", "class_token", "cls_token")


class TorchvisionEncoderBlock(nn.Module):
    """torchvision.models.vision_transformer.EncoderBlock: pre-norm attention and MLP blocks."""

    def __init__(self, hidden: int, heads: int, mlp: int, eps: float):
        super().__init__()
        self.ln_1 = nn.LayerNorm(hidden, eps=eps)
        self.self_attention = nn.MultiheadAttention(hidden, heads, batch_first=True)
        self.dropout = nn.Dropout(0.0)
        self.ln_2 = nn.LayerNorm(hidden, eps=eps)
        self.mlp = nn.Sequential(nn.Linear(hidden, mlp), nn.GELU(), nn.Dropout(0.0), nn.Linear(mlp, hidden),
                                 nn.Dropout(0.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.ln_1(x)
        y, _ = self.self_attention(y, y, y, need_weights=False)
        x = x + self.dropout(y)
        return x + self.mlp(self.ln_2(x))


class TorchvisionEncoder(nn.Module):
    """torchvision Encoder: learned position embedding (class token included), blocks, final LayerNorm."""

    def __init__(self, length: int, hidden: int, layers: int, heads: int, mlp: int, eps: float):
        super().__init__()
        self.pos_embedding = nn.Parameter(torch.empty(1, length, hidden).normal_(std=0.02))
        self.dropout = nn.Dropout(0.0)
        self.layers = nn.Sequential(OrderedDict(
            (f"encoder_layer_{i}", TorchvisionEncoderBlock(hidden, heads, mlp, eps)) for i in range(layers)))
        self.ln = nn.LayerNorm(hidden, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ln(self.layers(self.dropout(x + self.pos_embedding)))


class TorchvisionViT(nn.Module):
    """torchvision.models.VisionTransformer (no conv stem, no representation layer)."""

    def __init__(self, image: int, patch: int, hidden: int, layers: int, heads: int, mlp: int, classes: int,
                 eps: float):
        super().__init__()
        self.patch = patch
        self.conv_proj = nn.Conv2d(CHANNELS, hidden, kernel_size=patch, stride=patch)
        self.class_token = nn.Parameter(torch.zeros(1, 1, hidden))
        self.encoder = TorchvisionEncoder((image // patch) ** 2 + 1, hidden, layers, heads, mlp, eps)
        self.heads = nn.Sequential(OrderedDict(head=nn.Linear(hidden, classes)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        x = self.conv_proj(x).reshape(n, self.conv_proj.out_channels, -1).permute(0, 2, 1)
        x = torch.cat([self.class_token.expand(n, -1, -1), x], dim=1)
        return self.heads(self.encoder(x)[:, 0])


class Named(nn.Module):
    """A container whose children are given by keyword, to spell out Hugging Face's nesting."""

    def __init__(self, **children: nn.Module):
        super().__init__()
        for name, child in children.items():
            self.add_module(name, child)


class HFLayer(nn.Module):
    """transformers ViTLayer: layernorm_before -> self-attention -> residual -> layernorm_after -> MLP."""

    def __init__(self, hidden: int, heads: int, mlp: int, eps: float):
        super().__init__()
        self.heads = heads
        self.attention = Named(
            attention=Named(query=nn.Linear(hidden, hidden), key=nn.Linear(hidden, hidden),
                            value=nn.Linear(hidden, hidden)),
            output=Named(dense=nn.Linear(hidden, hidden)))
        self.intermediate = Named(dense=nn.Linear(hidden, mlp))
        self.output = Named(dense=nn.Linear(mlp, hidden))
        self.layernorm_before = nn.LayerNorm(hidden, eps=eps)
        self.layernorm_after = nn.LayerNorm(hidden, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, length, hidden = x.shape
        head_dim = hidden // self.heads
        y = self.layernorm_before(x)
        att = self.attention.attention
        q, k, v = (m(y).view(n, length, self.heads, head_dim).transpose(1, 2)
                   for m in (att.query, att.key, att.value))
        weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(head_dim), dim=-1)
        mixed = (weights @ v).transpose(1, 2).reshape(n, length, hidden)
        x = x + self.attention.output.dense(mixed)
        y = nn.functional.gelu(self.intermediate.dense(self.layernorm_after(x)))
        return x + self.output.dense(y)


class HFViT(nn.Module):
    """transformers ViTForImageClassification: ``vit`` (embeddings, encoder, layernorm) and ``classifier``."""

    def __init__(self, image: int, patch: int, hidden: int, layers: int, heads: int, mlp: int, classes: int,
                 eps: float):
        super().__init__()
        embeddings = Named(patch_embeddings=Named(projection=nn.Conv2d(CHANNELS, hidden, patch, stride=patch)))
        embeddings.cls_token = nn.Parameter(torch.randn(1, 1, hidden))
        embeddings.position_embeddings = nn.Parameter(torch.randn(1, (image // patch) ** 2 + 1, hidden))
        self.vit = Named(embeddings=embeddings,
                         encoder=Named(layer=nn.ModuleList(HFLayer(hidden, heads, mlp, eps) for _ in range(layers))),
                         layernorm=nn.LayerNorm(hidden, eps=eps))
        self.classifier = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        emb = self.vit.embeddings
        x = emb.patch_embeddings.projection(x).flatten(2).transpose(1, 2)
        x = torch.cat([emb.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + emb.position_embeddings
        for layer in self.vit.encoder.layer:
            x = layer(x)
        return self.classifier(self.vit.layernorm(x)[:, 0])


class BasicBlock(nn.Module):
    """Reference CIFAR block: relu(bn2(conv2(relu(bn1(conv1(x))))) + identity_conv(x)), 1x1 conv always."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.identity_conv = nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.identity_conv(x))


class ResNet18(nn.Module):
    """Reference CIFAR ResNet-18 (docs/definitions.md §7): conv-bn-relu, 3x3/2 max-pool, 4 stages of 2 blocks,
    avg pool, fc."""

    def __init__(self, width: int, classes: int):
        super().__init__()
        self.conv1 = nn.Conv2d(CHANNELS, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        cin = width
        for stage, (mult, stride) in enumerate(zip((1, 2, 4, 8), (1, 2, 2, 2)), start=1):
            cout = width * mult
            setattr(self, f"layer{stage}", nn.Sequential(BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)))
            cin = cout
        self.fc = nn.Linear(cin, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.max_pool2d(torch.relu(self.bn1(self.conv1(x))), 3, 2, 1)
        for stage in range(1, 5):
            x = getattr(self, f"layer{stage}")(x)
        return self.fc(x.mean(dim=(2, 3)))


def randomise(model: nn.Module, generator: torch.Generator) -> None:
    """Every parameter and BatchNorm statistic random, LayerNorm/BatchNorm scales near 1, variances > 0."""
    with torch.no_grad():
        for name, value in model.state_dict().items():
            if value.dtype != torch.float32:
                continue
            noise = torch.randn(value.shape, generator=generator)
            if name.endswith("running_var"):
                value.copy_(0.5 + torch.rand(value.shape, generator=generator))
            elif value.ndim == 1 and ("ln" in name or "layernorm" in name or "bn" in name) and "weight" in name:
                value.copy_(1.0 + 0.2 * noise)
            elif value.ndim >= 2 and not any(s in name for s in POSITION_AND_TOKEN):
                fan_in = value[0].numel()
                value.copy_(noise / math.sqrt(fan_in))
            else:
                value.copy_(0.3 * noise)


def logits(model: nn.Module, x: np.ndarray) -> np.ndarray:
    """Eval-mode float32 logits of NHWC inputs."""
    model.eval()
    with torch.no_grad():
        return model(torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()).numpy()


def numpy_state(model: nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def vision_transformer_npz(sd: dict[str, np.ndarray], cfg: dict) -> dict[str, np.ndarray]:
    """The torchvision ViT's weights under google-research/vision_transformer names and layouts."""
    d, heads = cfg["hidden"], cfg["heads"]
    out = {
        "embedding/kernel": sd["conv_proj.weight"].transpose(2, 3, 1, 0),
        "embedding/bias": sd["conv_proj.bias"],
        "cls": sd["class_token"],
        "Transformer/posembed_input/pos_embedding": sd["encoder.pos_embedding"],
        "Transformer/encoder_norm/scale": sd["encoder.ln.weight"],
        "Transformer/encoder_norm/bias": sd["encoder.ln.bias"],
        "head/kernel": sd["heads.head.weight"].T,
        "head/bias": sd["heads.head.bias"],
    }
    for i in range(cfg["layers"]):
        src, dst = f"encoder.layers.encoder_layer_{i}.", f"Transformer/encoderblock_{i}/"
        for s, t in (("ln_1", "LayerNorm_0"), ("ln_2", "LayerNorm_2")):
            out[dst + t + "/scale"], out[dst + t + "/bias"] = sd[src + s + ".weight"], sd[src + s + ".bias"]
        w, b = sd[src + "self_attention.in_proj_weight"], sd[src + "self_attention.in_proj_bias"]
        att = dst + "MultiHeadDotProductAttention_1/"
        for j, name in enumerate(("query", "key", "value")):
            out[att + name + "/kernel"] = w[j * d:(j + 1) * d].T.reshape(d, heads, d // heads)
            out[att + name + "/bias"] = b[j * d:(j + 1) * d].reshape(heads, d // heads)
        out[att + "out/kernel"] = sd[src + "self_attention.out_proj.weight"].T.reshape(heads, d // heads, d)
        out[att + "out/bias"] = sd[src + "self_attention.out_proj.bias"]
        for s, t in (("mlp.0", "Dense_0"), ("mlp.3", "Dense_1")):
            out[dst + "MlpBlock_3/" + t + "/kernel"] = sd[src + s + ".weight"].T
            out[dst + "MlpBlock_3/" + t + "/bias"] = sd[src + s + ".bias"]
    return out


def big_vision_npz(vt: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """big_vision names for the same function: the class token's position embedding folded into ``cls``."""
    rename = {"MultiHeadDotProductAttention_1": "MultiHeadDotProductAttention_0", "LayerNorm_2": "LayerNorm_1",
              "MlpBlock_3": "MlpBlock_0"}
    out = {}
    for key, value in vt.items():
        if key == "Transformer/posembed_input/pos_embedding":
            out["params/pos_embedding"] = value[:, 1:]
            continue
        if key == "cls":
            value = value + vt["Transformer/posembed_input/pos_embedding"][:, :1]
        parts = [rename.get(p, p) for p in key.split("/")]
        out["params/" + "/".join(parts)] = value
    return out


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(0)
    rng = np.random.default_rng(0)
    vit_x = rng.normal(size=(BATCH, IMAGE, IMAGE, CHANNELS)).astype(np.float32)
    resnet_x = rng.normal(size=(BATCH, IMAGE, IMAGE, CHANNELS)).astype(np.float32)

    tv = TorchvisionViT(IMAGE, TV["patch"], TV["hidden"], TV["layers"], TV["heads"], TV["mlp"], TV["classes"],
                        TV["eps"])
    randomise(tv, generator)
    torch.save(tv.state_dict(), OUT / "torchvision_vit_tiny.pth")
    torch.save(tv.state_dict(), OUT / "torchvision_vit_tiny_legacy.pth", _use_new_zipfile_serialization=False)
    torch.save({k: v.to(torch.bfloat16) for k, v in tv.state_dict().items()}, OUT / "torchvision_vit_tiny_bf16.pth")
    tv_logits = logits(tv, vit_x)
    vt = vision_transformer_npz(numpy_state(tv), TV)
    np.savez(OUT / "vit_tiny.npz", **vt)
    np.savez(OUT / "big_vision_vit_tiny.npz", **big_vision_npz(vt))

    hf = HFViT(IMAGE, HF["patch"], HF["hidden"], HF["layers"], HF["heads"], HF["mlp"], HF["classes"], HF["eps"])
    randomise(hf, generator)
    hf_dir = OUT / "hf_vit_tiny"
    hf_dir.mkdir(exist_ok=True)
    state = {k: v.contiguous() for k, v in hf.state_dict().items()}
    save_file(state, str(hf_dir / "model.safetensors"), metadata={"format": "pt"})
    torch.save(state, hf_dir / "pytorch_model.bin")
    labels = {str(i): f"class_{i}" for i in range(HF["classes"])}
    config = {
        "architectures": ["ViTForImageClassification"], "model_type": "vit", "hidden_size": HF["hidden"],
        "num_hidden_layers": HF["layers"], "num_attention_heads": HF["heads"], "intermediate_size": HF["mlp"],
        "hidden_act": "gelu", "layer_norm_eps": HF["eps"], "image_size": IMAGE, "patch_size": HF["patch"],
        "num_channels": CHANNELS, "qkv_bias": True, "id2label": labels,
        "label2id": {v: int(k) for k, v in labels.items()},
    }
    (hf_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    hf_logits = logits(hf, vit_x)

    resnet = ResNet18(RESNET["width"], RESNET["classes"])
    randomise(resnet, generator)
    torch.save(resnet.state_dict(), OUT / "resnet18_tiny.pth")
    resnet_logits = logits(resnet, resnet_x)

    np.savez(OUT / "reference_logits.npz", vit_inputs=vit_x, resnet_inputs=resnet_x, torchvision_vit=tv_logits,
             hf_vit=hf_logits, resnet18=resnet_logits)
    total = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    print(f"wrote {OUT} ({total / 1024:.0f} KiB), torch {torch.__version__}")


if __name__ == "__main__":
    main()
