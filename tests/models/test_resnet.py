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


def _normal(seed: int, shape: tuple[int, ...]) -> jax.Array:
    """Standard-normal float32 test data from numpy (jax.random compiles a kernel per shape on CPU)."""
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def _images(seed: int, n: int = 4, size: int = 8) -> jax.Array:
    return _normal(seed, (n, size, size, 3))


def _init(model: ResNet18, x: jax.Array) -> dict:
    """Variables with the model's tree and shapes, filled from numpy's RNG.

    A real ``model.init`` costs ~8 s of XLA compilation on the 2-core test machine (one truncated normal
    per parameter shape); the tests only need the tree (``jax.eval_shape`` traces the real init) and
    non-trivial values: kernels N(0, 1/fan_in), BN scales and running variances in [0.5, 1.5], biases and
    running means N(0, 0.1^2).
    """
    shapes = jax.eval_shape(lambda inputs: model.init({"params": jax.random.key(0)}, inputs, train=False), x)
    rng = np.random.default_rng(0)

    def fill(path, leaf):
        name = path[-1].key
        if name == "kernel":
            return jnp.asarray(rng.normal(size=leaf.shape) / np.sqrt(np.prod(leaf.shape[:-1])), jnp.float32)
        if name in ("scale", "var"):
            return jnp.asarray(rng.uniform(0.5, 1.5, size=leaf.shape), jnp.float32)
        return jnp.asarray(0.1 * rng.normal(size=leaf.shape), jnp.float32)

    return jax.tree_util.tree_map_with_path(fill, shapes)


def _apply(model: ResNet18, variables: dict, x: jax.Array, **kwargs):
    """Jitted model.apply (op-by-op execution on CPU is much slower than compiling the whole graph)."""
    if "mutable" in kwargs:
        kwargs["mutable"] = tuple(kwargs["mutable"])
    return jax.jit(model.apply, static_argnames=("train", "mutable"))(variables, x, **kwargs)


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

    def test_parameter_tree(self):
        model = ResNet18(num_classes=NUM_CLASSES, width=WIDTH)
        init = lambda m: jax.eval_shape(  # noqa: E731
            lambda inputs: m.init({"params": jax.random.key(0)}, inputs, train=False), _images(1)
        )
        variables = init(model)
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
            self.assertEqual(leaf.dtype, jnp.float32)
        for other in (ResNet18(NUM_CLASSES, WIDTH, small_conv_size=0), ResNet18(NUM_CLASSES, WIDTH, jnp.bfloat16)):
            chex.assert_trees_all_equal_shapes_and_dtypes(init(other), variables)

    def test_eval_graph_matches_independent_reference(self):
        """12x12 input: stage outputs 6, 3, 2, 1 wide, so both conv paths (lax and im2col matmuls) run."""
        model = ResNet18(num_classes=NUM_CLASSES, width=WIDTH)
        x = _images(2, size=12)
        variables = _init(model, x)
        logits = _apply(model, variables, x, train=False)
        chex.assert_shape(logits, (4, NUM_CLASSES))
        chex.assert_type(logits, jnp.float32)
        chex.assert_trees_all_close(logits, jax.jit(_reference_forward)(variables, x), atol=1e-5, rtol=1e-5)

    def test_train_mode_batch_statistics_with_mask(self):
        """Masked rows (filled with 1e6) change nothing: running stats and valid logits equal a run on the
        valid rows alone; bn1's update is 0.9 * old + 0.1 * (mean, biased var) of conv1(x_valid), by hand."""
        model = ResNet18(num_classes=NUM_CLASSES, width=WIDTH)
        x = _images(6, n=6)
        variables = _init(model, x)
        mask = jnp.array([True, False, True, True, False, True])
        poisoned = jnp.where(mask[:, None, None, None], x, 1e6)
        logits, updated = _apply(model, variables, poisoned, train=True, mask=mask, mutable=["batch_stats"])
        logits_valid, updated_valid = _apply(model, variables, x[mask], train=True, mutable=["batch_stats"])
        chex.assert_trees_all_close(updated["batch_stats"], updated_valid["batch_stats"], atol=1e-5, rtol=1e-5)
        chex.assert_trees_all_close(logits[mask], logits_valid, atol=1e-5, rtol=1e-5)
        for old, new in zip(jax.tree.leaves(variables["batch_stats"]), jax.tree.leaves(updated["batch_stats"])):
            self.assertFalse(np.allclose(old, new))

        kernel = np.asarray(variables["params"]["conv1"]["kernel"])
        xpad = np.pad(np.asarray(x)[np.asarray(mask)], ((0, 0), (1, 1), (1, 1), (0, 0)))
        feats = np.zeros((4, 8, 8, WIDTH))
        for i in range(3):
            for j in range(3):
                feats += xpad[:, i : i + 8, j : j + 8, :] @ kernel[i, j]
        old, stats = variables["batch_stats"]["bn1"], updated["batch_stats"]["bn1"]
        chex.assert_trees_all_close(stats["mean"], 0.9 * old["mean"] + 0.1 * feats.mean(axis=(0, 1, 2)), atol=1e-5)
        chex.assert_trees_all_close(stats["var"], 0.9 * old["var"] + 0.1 * feats.var(axis=(0, 1, 2)), atol=1e-5)

    def test_bfloat16_compute_keeps_float32_params_and_logits(self):
        model = ResNet18(num_classes=NUM_CLASSES, width=WIDTH, dtype=jnp.bfloat16)
        x = _images(8)
        variables = _init(model, x)
        for leaf in jax.tree.leaves(variables):
            chex.assert_type(leaf, jnp.float32)
        logits, updated = _apply(model, variables, x, train=True, mutable=["batch_stats"])
        chex.assert_type(logits, jnp.float32)
        chex.assert_tree_all_finite(logits)
        for leaf in jax.tree.leaves(updated):
            chex.assert_type(leaf, jnp.float32)


# (kernel, padding, stride, input height); input width is height + 1, outputs are 1x1 to 3x3.
SMALL_CASES = [
    (1, 0, 1, 1),
    (1, 0, 2, 3),
    (3, 1, 1, 2),
    (3, 1, 2, 1),
    (3, 1, 2, 4),
    (3, 0, 2, 5),
]


class ConvTest(chex.TestCase):
    """The im2col path computes the same function, parameters and gradients as lax conv."""

    @parameterized.parameters(*SMALL_CASES)
    def test_small_path_matches_lax(self, kernel, pad, stride, size):
        common = dict(
            features=3,
            kernel_size=(kernel, kernel),
            strides=(stride, stride),
            padding=((pad, pad), (pad, pad)),
            use_bias=True,
        )
        lax_conv, small_conv = Conv(small_conv_size=0, **common), Conv(small_conv_size=8, **common)
        x = _normal(size, (2, size, size + 1, 4))
        variables = jax.eval_shape(lambda inputs: lax_conv.init(jax.random.key(1), inputs), x)
        chex.assert_trees_all_equal_shapes_and_dtypes(
            jax.eval_shape(lambda inputs: small_conv.init(jax.random.key(1), inputs), x), variables
        )
        variables = {
            "params": {
                "kernel": _normal(2, variables["params"]["kernel"].shape),
                "bias": jnp.array([0.5, -1.0, 2.0]),
            }
        }
        self.assertNotIn("conv_general_dilated", str(jax.make_jaxpr(small_conv.apply)(variables, x)))
        self.assertIn("conv_general_dilated", str(jax.make_jaxpr(lax_conv.apply)(variables, x)))

        @jax.jit
        def outputs_and_grads(v, inputs):
            results = []
            for conv in (small_conv, lax_conv):
                out = conv.apply(v, inputs)
                grads = jax.grad(lambda w, z: jnp.sum(jnp.sin(conv.apply(w, z))), argnums=(0, 1))(v, inputs)
                results.append((out, grads))
            return results

        small, reference = outputs_and_grads(variables, x)
        chex.assert_shape(small[0], reference[0].shape)
        chex.assert_trees_all_close(small, reference, atol=1e-5, rtol=1e-5)

    @chex.variants(with_jit=True, without_jit=True)
    def test_torch_padding_semantics_by_hand(self):
        """stride 2, pad 1, 3x3 on 6x6: out[a, b] = sum_ij xpad[2a + i, 2b + j] @ k[i, j] (no SAME shift)."""
        for small in (0, 100):
            conv = Conv(features=2, kernel_size=(3, 3), strides=(2, 2), padding=((1, 1), (1, 1)), small_conv_size=small)
            x = _normal(3, (1, 6, 6, 2))
            variables = {"params": {"kernel": _normal(4, (3, 3, 2, 2))}}
            k = np.asarray(variables["params"]["kernel"])
            xpad = np.pad(np.asarray(x)[0], ((1, 1), (1, 1), (0, 0)))
            expected = np.zeros((3, 3, 2))
            for a in range(3):
                for b in range(3):
                    for i in range(3):
                        for j in range(3):
                            expected[a, b] += xpad[2 * a + i, 2 * b + j] @ k[i, j]
            chex.assert_trees_all_close(self.variant(conv.apply)(variables, x)[0], expected, atol=1e-5)


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
