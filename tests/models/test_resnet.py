"""Tests of the CIFAR ResNet-18 and of the small-output convolution path."""
import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from absl.testing import parameterized
from jax import lax

from lotus_jax.models import MODEL_NAMES, Conv, ResNet18, build_model

WIDTH = 4
NUM_CLASSES = 5
BLOCKS = [f"layer{stage}_{index}" for stage in range(1, 5) for index in range(2)]


def _images(key: jax.Array, n: int = 4, size: int = 8) -> jax.Array:
    return jax.random.normal(key, (n, size, size, 3), jnp.float32)


def _init(model: ResNet18, x: jax.Array) -> dict:
    return jax.jit(lambda inputs: model.init({"params": jax.random.key(0)}, inputs, train=False))(x)


def _apply(model: ResNet18, variables: dict, x: jax.Array, **kwargs):
    """Jitted model.apply (op-by-op execution on CPU is much slower than compiling the whole graph)."""
    if "mutable" in kwargs:
        kwargs["mutable"] = tuple(kwargs["mutable"])
    return jax.jit(model.apply, static_argnames=("train", "mutable"))(variables, x, **kwargs)


def _random_batch_stats(variables: dict, key: jax.Array) -> dict:
    """Non-trivial running statistics (means ~N(0, 0.1), variances in [0.5, 1.5])."""
    leaves, treedef = jax.tree.flatten_with_path(variables["batch_stats"])
    keys = jax.random.split(key, len(leaves))
    new = []
    for (path, leaf), k in zip(leaves, keys):
        if path[-1].key == "mean":
            new.append(0.1 * jax.random.normal(k, leaf.shape))
        else:
            new.append(jax.random.uniform(k, leaf.shape, minval=0.5, maxval=1.5))
    return dict(variables, batch_stats=jax.tree.unflatten(treedef, new))


def _reference_forward(variables: dict, x: jax.Array) -> jax.Array:
    """Independent eval-mode ResNet-18 (CIFAR variant) written with lax ops, torch padding semantics."""
    params, stats = variables["params"], variables["batch_stats"]

    def conv(h, kernel, stride):
        pad = (kernel.shape[0] - 1) // 2
        return lax.conv_general_dilated(
            h, kernel, (stride, stride), ((pad, pad), (pad, pad)), dimension_numbers=("NHWC", "HWIO", "NHWC")
        )

    def bn(h, p, s):
        return (h - s["mean"]) / jnp.sqrt(s["var"] + 1e-5) * p["scale"] + p["bias"]

    h = jax.nn.relu(bn(conv(x, params["conv1"]["kernel"], 1), params["bn1"], stats["bn1"]))
    h = lax.reduce_window(h, -jnp.inf, lax.max, (1, 3, 3, 1), (1, 2, 2, 1), ((0, 0), (1, 1), (1, 1), (0, 0)))
    for name in BLOCKS:
        p, s = params[name], stats[name]
        stride = 2 if name.endswith("_0") and name != "layer1_0" else 1
        r = jax.nn.relu(bn(conv(h, p["conv1"]["kernel"], stride), p["bn1"], s["bn1"]))
        r = bn(conv(r, p["conv2"]["kernel"], 1), p["bn2"], s["bn2"])
        h = jax.nn.relu(r + conv(h, p["identity_conv"]["kernel"], stride))
    h = h.mean(axis=(1, 2))
    return h @ params["fc"]["kernel"] + params["fc"]["bias"]


class ResNetTest(chex.TestCase):
    """Shapes, parameter names, BatchNorm behaviour and graph of ResNet18."""

    @chex.variants(with_jit=True, without_jit=True)
    def test_output_shape_and_dtype(self):
        model = ResNet18(num_classes=NUM_CLASSES, width=WIDTH)
        x = _images(jax.random.key(1))
        variables = _init(model, x)
        logits = self.variant(lambda v, inputs: model.apply(v, inputs, train=False))(variables, x)
        chex.assert_shape(logits, (4, NUM_CLASSES))
        chex.assert_type(logits, jnp.float32)
        chex.assert_tree_all_finite(logits)

    def test_parameter_tree_names_and_shapes(self):
        model = ResNet18(num_classes=NUM_CLASSES, width=WIDTH)
        variables = _init(model, _images(jax.random.key(1)))
        params = variables["params"]
        self.assertEqual(set(variables), {"params", "batch_stats"})
        self.assertEqual(set(params), {"conv1", "bn1", "fc", *BLOCKS})
        self.assertEqual(set(variables["batch_stats"]), {"bn1", *BLOCKS})
        for name in BLOCKS:
            self.assertEqual(set(params[name]), {"conv1", "bn1", "conv2", "bn2", "identity_conv"})
            for conv in ("conv1", "conv2", "identity_conv"):
                self.assertEqual(set(params[name][conv]), {"kernel"})
        chex.assert_shape(params["conv1"]["kernel"], (3, 3, 3, WIDTH))
        chex.assert_shape(params["layer1_0"]["identity_conv"]["kernel"], (1, 1, WIDTH, WIDTH))
        chex.assert_shape(params["layer2_0"]["identity_conv"]["kernel"], (1, 1, WIDTH, 2 * WIDTH))
        chex.assert_shape(params["layer2_0"]["conv1"]["kernel"], (3, 3, WIDTH, 2 * WIDTH))
        chex.assert_shape(params["layer4_1"]["conv2"]["kernel"], (3, 3, 8 * WIDTH, 8 * WIDTH))
        chex.assert_shape(params["layer4_1"]["bn2"]["scale"], (8 * WIDTH,))
        chex.assert_shape(params["fc"]["kernel"], (8 * WIDTH, NUM_CLASSES))
        chex.assert_shape(variables["batch_stats"]["layer3_0"]["bn1"]["var"], (4 * WIDTH,))
        for leaf in jax.tree.leaves(variables):
            chex.assert_type(leaf, jnp.float32)

    def test_eval_graph_matches_independent_reference(self):
        model = ResNet18(num_classes=NUM_CLASSES, width=WIDTH)
        x = _images(jax.random.key(2), size=12)
        variables = _random_batch_stats(_init(model, x), jax.random.key(3))
        variables["params"]["fc"]["bias"] = jnp.arange(NUM_CLASSES, dtype=jnp.float32) / 10
        chex.assert_trees_all_close(
            _apply(model, variables, x, train=False), jax.jit(_reference_forward)(variables, x), atol=1e-5, rtol=1e-5
        )

    def test_train_mode_updates_batch_stats_and_eval_does_not(self):
        model = ResNet18(num_classes=NUM_CLASSES, width=WIDTH)
        x = _images(jax.random.key(4)) + 3.0
        variables = _init(model, x)
        chex.assert_trees_all_close(variables["batch_stats"]["bn1"]["mean"], jnp.zeros(WIDTH))
        _, updated = _apply(model, variables, x, train=True, mutable=["batch_stats"])
        for old, new in zip(jax.tree.leaves(variables["batch_stats"]), jax.tree.leaves(updated["batch_stats"])):
            self.assertFalse(np.allclose(old, new))
        _, unchanged = _apply(model, variables, x, train=False, mutable=["batch_stats"])
        chex.assert_trees_all_equal(unchanged["batch_stats"], variables["batch_stats"])

    def test_first_batch_norm_update_by_hand(self):
        """bn1's new running stats are 0.9 * old + 0.1 * (mean, biased var) of conv1(x) over valid rows."""
        model = ResNet18(num_classes=NUM_CLASSES, width=WIDTH)
        x = _images(jax.random.key(5))
        variables = _init(model, x)
        mask = jnp.array([True, True, False, True])
        _, updated = _apply(model, variables, x, train=True, mask=mask, mutable=["batch_stats"])
        kernel = np.asarray(variables["params"]["conv1"]["kernel"])
        xpad = np.pad(np.asarray(x)[np.asarray(mask)], ((0, 0), (1, 1), (1, 1), (0, 0)))
        feats = np.zeros((3, 8, 8, WIDTH))
        for i in range(3):
            for j in range(3):
                feats += xpad[:, i : i + 8, j : j + 8, :] @ kernel[i, j]
        stats = updated["batch_stats"]["bn1"]
        chex.assert_trees_all_close(stats["mean"], 0.1 * feats.mean(axis=(0, 1, 2)), atol=1e-5)
        chex.assert_trees_all_close(stats["var"], 0.9 + 0.1 * feats.var(axis=(0, 1, 2)), atol=1e-5)

    def test_masked_rows_do_not_affect_batch_statistics(self):
        model = ResNet18(num_classes=NUM_CLASSES, width=WIDTH)
        x = _images(jax.random.key(6), n=6)
        variables = _init(model, x)
        mask = jnp.array([True, False, True, True, False, True])
        poisoned = jnp.where(mask[:, None, None, None], x, 1e6)
        logits, updated = _apply(model, variables, poisoned, train=True, mask=mask, mutable=["batch_stats"])
        logits_valid, updated_valid = _apply(model, variables, x[mask], train=True, mutable=["batch_stats"])
        chex.assert_trees_all_close(updated["batch_stats"], updated_valid["batch_stats"], atol=1e-5, rtol=1e-5)
        chex.assert_trees_all_close(logits[mask], logits_valid, atol=1e-5, rtol=1e-5)
        _, updated_unmasked = _apply(model, variables, poisoned, train=True, mutable=["batch_stats"])
        self.assertFalse(
            np.allclose(updated_unmasked["batch_stats"]["bn1"]["var"], updated_valid["batch_stats"]["bn1"]["var"])
        )

    def test_small_conv_path_gives_same_logits_and_gradients(self):
        x = _images(jax.random.key(7), size=16)
        models = [ResNet18(num_classes=NUM_CLASSES, width=WIDTH, small_conv_size=s) for s in (0, 2, 4)]
        variables = _init(models[0], x)
        for model in models[1:]:
            chex.assert_trees_all_equal_shapes(_init(model, x), variables)

        def loss(params, model):
            return jnp.sum(jnp.sin(model.apply(dict(variables, params=params), x, train=False)))

        grads = [jax.jit(jax.grad(loss), static_argnums=1)(variables["params"], model) for model in models]
        outs = [_apply(model, variables, x, train=False) for model in models]
        for out, grad in zip(outs[1:], grads[1:]):
            chex.assert_trees_all_close(out, outs[0], atol=1e-5, rtol=1e-5)
            chex.assert_trees_all_close(grad, grads[0], atol=1e-5, rtol=1e-5)

    def test_bfloat16_compute_keeps_float32_params_and_logits(self):
        model = ResNet18(num_classes=NUM_CLASSES, width=WIDTH, dtype=jnp.bfloat16)
        x = _images(jax.random.key(8))
        variables = _init(model, x)
        for leaf in jax.tree.leaves(variables):
            chex.assert_type(leaf, jnp.float32)
        logits, updated = _apply(model, variables, x, train=True, mutable=["batch_stats"])
        chex.assert_type(logits, jnp.float32)
        chex.assert_tree_all_finite(logits)
        for leaf in jax.tree.leaves(updated):
            chex.assert_type(leaf, jnp.float32)


def _conv_pair(kernel: int, stride: int, pad: int, use_bias: bool) -> tuple[Conv, Conv]:
    common = dict(
        features=3, kernel_size=(kernel, kernel), strides=(stride, stride), padding=((pad, pad), (pad, pad))
    )
    return Conv(small_conv_size=0, use_bias=use_bias, **common), Conv(small_conv_size=100, use_bias=use_bias, **common)


class ConvTest(parameterized.TestCase):
    """The shifted-matmul path computes the same function, parameters and gradients as lax conv."""

    @parameterized.product(
        kernel_pad=[(1, 0), (3, 1), (3, 0)], stride=[1, 2], size=[1, 2, 3, 5]
    )
    def test_small_path_matches_lax(self, kernel_pad, stride, size):
        kernel, pad = kernel_pad
        if size + 2 * pad < kernel:
            self.skipTest("empty output")
        lax_conv, small_conv = _conv_pair(kernel, stride, pad, use_bias=True)
        x = jax.random.normal(jax.random.key(size), (2, size, size + 1, 4))
        variables = lax_conv.init(jax.random.key(1), x)
        variables["params"]["bias"] = jnp.array([0.5, -1.0, 2.0])
        chex.assert_trees_all_equal_shapes(small_conv.init(jax.random.key(1), x), variables)
        self.assertNotIn("conv_general_dilated", str(jax.make_jaxpr(lambda v: small_conv.apply(v, x))(variables)))
        out = small_conv.apply(variables, x)
        chex.assert_trees_all_close(out, lax_conv.apply(variables, x), atol=1e-5, rtol=1e-5)

        def loss(conv, v, inputs):
            return jnp.sum(jnp.sin(conv.apply(v, inputs)))

        grads = jax.grad(lambda v, inputs: loss(small_conv, v, inputs), argnums=(0, 1))(variables, x)
        grads_lax = jax.grad(lambda v, inputs: loss(lax_conv, v, inputs), argnums=(0, 1))(variables, x)
        chex.assert_trees_all_close(grads, grads_lax, atol=1e-5, rtol=1e-5)

    def test_torch_padding_semantics_by_hand(self):
        """stride 2, pad 1, 3x3 on 6x6: out[a, b] = sum_ij xpad[2a + i, 2b + j] @ k[i, j] (no SAME shift)."""
        for small in (0, 100):
            conv = Conv(features=2, kernel_size=(3, 3), strides=(2, 2), padding=((1, 1), (1, 1)), small_conv_size=small)
            x = jax.random.normal(jax.random.key(3), (1, 6, 6, 2))
            variables = conv.init(jax.random.key(4), x)
            k = np.asarray(variables["params"]["kernel"])
            xpad = np.pad(np.asarray(x)[0], ((1, 1), (1, 1), (0, 0)))
            expected = np.zeros((3, 3, 2))
            for a in range(3):
                for b in range(3):
                    for i in range(3):
                        for j in range(3):
                            expected[a, b] += xpad[2 * a + i, 2 * b + j] @ k[i, j]
            chex.assert_trees_all_close(conv.apply(variables, x)[0], expected, atol=1e-5)

    def test_bfloat16_small_path_accumulates_in_float32(self):
        conv = Conv(features=8, kernel_size=(3, 3), padding=((1, 1), (1, 1)), dtype=jnp.bfloat16, small_conv_size=2)
        x = jax.random.normal(jax.random.key(5), (2, 2, 2, 16))
        variables = conv.init(jax.random.key(6), x)
        out = conv.apply(variables, x)
        chex.assert_type(out, jnp.bfloat16)
        reference = Conv(features=8, kernel_size=(3, 3), padding=((1, 1), (1, 1)), small_conv_size=0).apply(
            variables, x.astype(jnp.bfloat16).astype(jnp.float32)
        )
        chex.assert_trees_all_close(out.astype(jnp.float32), reference, atol=5e-2, rtol=5e-2)


def test_build_model_resnet18():
    cfg = ml_collections.ConfigDict({"name": "resnet18", "width": 8})
    model = build_model(cfg, num_classes=7, dtype=jnp.float32)
    assert isinstance(model, ResNet18)
    assert (model.width, model.num_classes, model.small_conv_size) == (8, 7, 2)
    default = build_model(ml_collections.ConfigDict({"name": "resnet18"}), num_classes=3, dtype=jnp.bfloat16)
    assert (default.width, default.dtype) == (64, jnp.bfloat16)
    assert "resnet18" in MODEL_NAMES


def test_build_model_unknown_name():
    with pytest.raises(ValueError, match="resnet18, vit"):
        build_model(ml_collections.ConfigDict({"name": "resnet50"}), num_classes=3, dtype=jnp.float32)
