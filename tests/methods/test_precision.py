"""Mixed precision (`config.dtype=bfloat16`): bf16 compute, float32 parameters, optimizer state, softmax,
loss and metrics; results within a stated bound of float32."""

import functools

import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np
import optax
import pytest

from lotus_jax.data import make_mesh, to_device
from lotus_jax.data.transforms import Preprocess
from lotus_jax.methods import lotus
from lotus_jax.train.state import create_state, place
from lotus_jax.metrics.stats import batch_statistics
from lotus_jax.models import build_model

MODELS = {
    "resnet18": mlc.ConfigDict(dict(name="resnet18", width=4)),
    "vit": mlc.ConfigDict(dict(name="vit", variant="Ti/4", num_layers=2)),
}


def _setup(name, dtype):
    """The model in `dtype` and float32 variables with random values (no init compile: it is slow on CPU)."""
    model = build_model(MODELS[name], 10, dtype)
    shapes = jax.eval_shape(lambda k: model.init({"params": k}, jnp.zeros((1, 16, 16, 3)), train=False),
                            jax.random.key(0))
    rng = np.random.default_rng(0)

    def value(path, s):
        key = jax.tree_util.keystr(path)
        if "var" in key or "scale" in key:
            return jnp.ones(s.shape, s.dtype)
        fan_in = int(np.prod(s.shape[:-1])) or 1
        return jnp.asarray(rng.normal(0, 1 / np.sqrt(fan_in), s.shape), s.dtype)

    return model, jax.tree_util.tree_map_with_path(value, shapes)


@pytest.mark.parametrize("name", list(MODELS))
def test_bf16_logits_and_statistics_close_to_float32(name):
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.integers(0, 256, (32, 16, 16, 3), dtype=np.uint8))
    prep = Preprocess((0.5,) * 3, (0.25,) * 3)
    out = {}
    for dtype in (jnp.float32, jnp.bfloat16):
        model, variables = _setup(name, dtype)
        logits = jax.jit(lambda v, x: model.apply(v, prep(x), train=False))(variables, images)
        assert logits.dtype == jnp.float32
        out[dtype] = (logits, batch_statistics(logits, jnp.zeros(32, jnp.int32), jnp.ones(32, bool), 10))
    (l32, s32), (l16, s16) = out[jnp.float32], out[jnp.bfloat16]
    scale = float(jnp.max(jnp.abs(l32))) + 1e-6
    # bf16 keeps 8 mantissa bits (relative step 2^-8 ≈ 0.4%); a few layers compound it.
    assert float(jnp.max(jnp.abs(l16 - l32))) / scale < 0.05
    np.testing.assert_allclose(s16["probs"], s32["probs"], atol=0.02)
    assert s16["entropy"].dtype == jnp.float32 and s16["prob_sums"].dtype == jnp.float32


@pytest.mark.parametrize("name", ["vit"])  # the step does not depend on the architecture; ViT compiles fast
def test_bf16_lotus_step_keeps_float32_state_and_close_loss(name):
    rng = np.random.default_rng(1)
    mesh = make_mesh(1)
    batch = to_device({"image": rng.integers(0, 256, (16, 16, 16, 3), dtype=np.uint8),
                       "label": np.zeros(16, np.int32), "mask": np.ones(16, bool),
                       "forget": (np.arange(16) % 2).astype(np.int32)}, mesh)
    prep = Preprocess((0.5,) * 3, (0.25,) * 3)
    losses, states = {}, {}
    for dtype in (jnp.float32, jnp.bfloat16):
        model, variables = _setup(name, dtype)
        state = create_state(model, variables, optax.adamw(1e-3, weight_decay=5e-4), mesh)
        step = jax.jit(functools.partial(lotus.lotus_step, prep=prep))
        state, m = step(state, batch, place(variables, mesh), jnp.float32(2.0), jax.random.key(3))
        losses[dtype], states[dtype] = float(m["loss"]), state
    for leaf in jax.tree.leaves((states[jnp.bfloat16].params, states[jnp.bfloat16].opt_state,
                                 states[jnp.bfloat16].batch_stats)):
        assert leaf.dtype in (jnp.float32, jnp.int32)
    assert abs(losses[jnp.bfloat16] - losses[jnp.float32]) < 0.05 * max(1.0, abs(losses[jnp.float32]))
