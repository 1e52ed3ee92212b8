"""Tests of the Vision Transformer and of build_model for ViTs."""
import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from lotus_jax.models import MODEL_NAMES, VIT_VARIANTS, ViT, build_model, vit_variant_config

TINY = dict(num_classes=5, patch_size=4, hidden_size=8, num_layers=2, num_heads=2, mlp_dim=16)
BLOCK_MODULES = {"LayerNorm_0", "MultiHeadDotProductAttention_1", "LayerNorm_2", "MlpBlock_3"}


def _normal(seed: int, shape: tuple[int, ...], scale: float = 1.0) -> jax.Array:
    """Normal float32 test data from numpy (jax.random compiles a kernel per shape on CPU)."""
    return jnp.asarray(scale * np.random.default_rng(seed).normal(size=shape), jnp.float32)


def _shapes(model: ViT, x: jax.Array) -> dict:
    return jax.eval_shape(lambda inputs: model.init({"params": jax.random.key(0)}, inputs, train=False), x)


def _random_variables(model: ViT, x: jax.Array) -> dict:
    """Variables with the model's tree, every leaf N(0, 0.3^2) except LayerNorm scales ~1 (non-trivial head)."""
    seeds = iter(range(1000))

    def fill(path, leaf):
        value = _normal(next(seeds), leaf.shape, 0.3)
        return value + 1.0 if path[-1].key == "scale" else value

    return jax.tree_util.tree_map_with_path(fill, _shapes(model, x))


def _reference_forward(params: dict, x: jax.Array, cfg: dict, eps: float = 1e-6) -> jax.Array:
    """Independent pre-norm ViT forward in plain jnp (google-research/vision_transformer layout)."""
    p, d, heads = cfg["patch_size"], cfg["hidden_size"], cfg["num_heads"]
    n, h, w, c = x.shape
    patches = x.reshape(n, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5).reshape(n, -1, p * p * c)
    tokens = patches @ params["embedding"]["kernel"].reshape(p * p * c, d) + params["embedding"]["bias"]
    tokens = jnp.concatenate([jnp.broadcast_to(params["cls"], (n, 1, d)), tokens], axis=1)
    enc = params["Transformer"]
    tokens = tokens + enc["posembed_input"]["pos_embedding"]

    def layer_norm(z, q):
        mean = z.mean(-1, keepdims=True)
        var = ((z - mean) ** 2).mean(-1, keepdims=True)
        return (z - mean) / jnp.sqrt(var + eps) * q["scale"] + q["bias"]

    def dense(z, q):
        return z @ q["kernel"] + q["bias"]

    for i in range(cfg["num_layers"]):
        blk = enc[f"encoderblock_{i}"]
        y = layer_norm(tokens, blk["LayerNorm_0"])
        att = blk["MultiHeadDotProductAttention_1"]
        q, k, v = (jnp.einsum("nld,dhe->nlhe", y, att[m]["kernel"]) + att[m]["bias"] for m in ("query", "key", "value"))
        weights = jax.nn.softmax(jnp.einsum("nqhe,nkhe->nhqk", q, k) / np.sqrt(d // heads), axis=-1)
        mixed = jnp.einsum("nhqk,nkhe->nqhe", weights, v)
        tokens = tokens + jnp.einsum("nqhe,hed->nqd", mixed, att["out"]["kernel"]) + att["out"]["bias"]
        y = layer_norm(tokens, blk["LayerNorm_2"])
        y = dense(jax.nn.gelu(dense(y, blk["MlpBlock_3"]["Dense_0"]), approximate=False), blk["MlpBlock_3"]["Dense_1"])
        tokens = tokens + y
    cls_out = layer_norm(tokens, enc["encoder_norm"])[:, 0]
    if "pre_logits" in params:
        cls_out = jnp.tanh(dense(cls_out, params["pre_logits"]))
    return dense(cls_out, params["head"])


class ViTTest(chex.TestCase):
    """Shapes, parameter names, initialisation and graph of ViT."""

    @chex.variants(with_jit=True, without_jit=True)
    def test_output_shape_dtype_and_train_flag_has_no_effect(self):
        model = ViT(**TINY)
        x = _normal(0, (3, 8, 8, 3))
        variables = _random_variables(model, x)
        apply = self.variant(lambda v, inputs, m: model.apply(v, inputs, train=True, mask=m))
        logits = apply(variables, x, jnp.array([True, False, True]))
        chex.assert_shape(logits, (3, TINY["num_classes"]))
        chex.assert_type(logits, jnp.float32)
        chex.assert_trees_all_close(logits, model.apply(variables, x, train=False), atol=1e-6)

    def test_parameter_tree(self):
        variables = _shapes(ViT(**TINY), _normal(0, (2, 8, 8, 3)))
        self.assertEqual(set(variables), {"params"})
        params = variables["params"]
        self.assertEqual(set(params), {"embedding", "cls", "Transformer", "head"})
        self.assertEqual(
            set(params["Transformer"]), {"posembed_input", "encoderblock_0", "encoderblock_1", "encoder_norm"}
        )
        block = params["Transformer"]["encoderblock_0"]
        self.assertEqual(set(block), BLOCK_MODULES)
        attention = block["MultiHeadDotProductAttention_1"]
        self.assertEqual(set(attention), {"query", "key", "value", "out"})
        chex.assert_shape(attention["query"]["kernel"], (8, 2, 4))
        chex.assert_shape(attention["query"]["bias"], (2, 4))
        chex.assert_shape(attention["out"]["kernel"], (2, 4, 8))
        self.assertEqual(set(block["MlpBlock_3"]), {"Dense_0", "Dense_1"})
        chex.assert_shape(block["MlpBlock_3"]["Dense_0"]["kernel"], (8, 16))
        chex.assert_shape(params["embedding"]["kernel"], (4, 4, 3, 8))
        chex.assert_shape(params["embedding"]["bias"], (8,))
        chex.assert_shape(params["cls"], (1, 1, 8))
        chex.assert_shape(params["Transformer"]["posembed_input"]["pos_embedding"], (1, 1 + 4, 8))
        chex.assert_shape(params["head"]["kernel"], (8, TINY["num_classes"]))
        for leaf in jax.tree.leaves(variables):
            self.assertEqual(leaf.dtype, jnp.float32)
        bigger = _shapes(ViT(**TINY), _normal(0, (2, 16, 12, 3)))
        chex.assert_shape(bigger["params"]["Transformer"]["posembed_input"]["pos_embedding"], (1, 1 + 12, 8))
        with_repr = _shapes(ViT(**TINY, representation_size=6), _normal(0, (2, 8, 8, 3)))["params"]
        chex.assert_shape(with_repr["pre_logits"]["kernel"], (8, 6))
        chex.assert_shape(with_repr["head"]["kernel"], (6, TINY["num_classes"]))
        bf16 = _shapes(ViT(**TINY, dtype=jnp.bfloat16), _normal(0, (2, 8, 8, 3)))
        chex.assert_trees_all_equal_shapes_and_dtypes(bf16, variables)

    def test_initialisation(self):
        """Zero head (so initial logits are exactly zero) and class token, N(0, 0.02^2) position embedding."""
        model = ViT(**dict(TINY, patch_size=2))
        x = _normal(1, (2, 8, 8, 3))
        variables = jax.jit(lambda inputs: model.init({"params": jax.random.key(0)}, inputs, train=False))(x)
        params = variables["params"]
        chex.assert_trees_all_equal(params["head"]["kernel"], jnp.zeros((8, TINY["num_classes"])))
        chex.assert_trees_all_equal(params["head"]["bias"], jnp.zeros(TINY["num_classes"]))
        chex.assert_trees_all_equal(params["cls"], jnp.zeros((1, 1, 8)))
        pos = np.asarray(params["Transformer"]["posembed_input"]["pos_embedding"])
        self.assertEqual(pos.shape, (1, 17, 8))
        self.assertLess(abs(pos.std() - 0.02), 0.005)

    def test_graph_matches_independent_reference(self):
        for extra, eps in ((dict(), 1e-6), (dict(representation_size=6, layernorm_epsilon=1e-12), 1e-12)):
            cfg = dict(TINY, **extra)
            model = ViT(**cfg)
            x = _normal(2, (2, 8, 8, 3))
            variables = _random_variables(model, x)
            expected = jax.jit(lambda p, inputs: _reference_forward(p, inputs, cfg, eps))(variables["params"], x)
            logits = jax.jit(lambda v, inputs: model.apply(v, inputs, train=False))(variables, x)
            chex.assert_trees_all_close(logits, expected, atol=1e-5, rtol=1e-5)

    def test_position_embedding_fixed_by_init_resolution(self):
        model = ViT(**TINY)
        variables = _random_variables(model, _normal(0, (1, 8, 8, 3)))
        with pytest.raises(Exception, match="pos_embedding"):
            jax.eval_shape(lambda v: model.apply(v, jnp.zeros((1, 12, 12, 3)), train=False), variables)


def test_variant_table():
    assert VIT_VARIANTS == {
        "Ti": dict(hidden_size=192, num_layers=12, num_heads=3, mlp_dim=768),
        "S": dict(hidden_size=384, num_layers=12, num_heads=6, mlp_dim=1536),
        "B": dict(hidden_size=768, num_layers=12, num_heads=12, mlp_dim=3072),
        "L": dict(hidden_size=1024, num_layers=24, num_heads=16, mlp_dim=4096),
    }
    assert vit_variant_config("B/16") == dict(VIT_VARIANTS["B"], patch_size=16)
    assert vit_variant_config("S/8") == dict(VIT_VARIANTS["S"], patch_size=8)
    assert vit_variant_config("Ti/4")["patch_size"] == 4
    assert vit_variant_config("L/32")["num_layers"] == 24
    for bad in ("H/14", "B16", "B/", "B/0", "b/16"):
        with pytest.raises(ValueError, match="Unknown ViT variant"):
            vit_variant_config(bad)


def test_build_model_vit_variant_and_overrides():
    cfg = ml_collections.ConfigDict(
        {"name": "vit", "variant": "B/16", "hidden_size": None, "num_layers": 4, "layernorm_epsilon": 1e-12}
    )
    model = build_model(cfg, num_classes=10, dtype=jnp.bfloat16)
    assert isinstance(model, ViT)
    assert (model.patch_size, model.hidden_size, model.num_heads, model.mlp_dim) == (16, 768, 12, 3072)
    assert (model.num_layers, model.layernorm_epsilon, model.num_classes) == (4, 1e-12, 10)
    assert model.dtype == jnp.bfloat16 and model.representation_size is None
    small = build_model(ml_collections.ConfigDict({"name": "vit", "variant": "Ti/8"}), num_classes=3, dtype=jnp.float32)
    assert (small.patch_size, small.hidden_size, small.num_layers, small.layernorm_epsilon) == (8, 192, 12, 1e-6)
    assert "vit" in MODEL_NAMES


def test_build_model_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match="resnet18, vit"):
        build_model(ml_collections.ConfigDict({"name": "vit_b16"}), num_classes=3, dtype=jnp.float32)
