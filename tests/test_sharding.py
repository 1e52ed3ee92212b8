"""FSDP sharding on 8 fake CPU devices: the parameter rule, meshes from the config, variables, train state
and checkpoints placed by the rule, and the LoTUS step and evaluation statistics on meshes (8,1), (4,2)
and (1,8) equal to one device."""

import dataclasses
import functools

import chex
import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from lotus_jax import checkpoint, sharding
from lotus_jax.data import pipeline
from lotus_jax.errors import ConfigError
from lotus_jax.methods import lotus
from lotus_jax.train.state import create_state, place, variables_of
from tests.methods.helpers import TinyCNN, make_context

MESHES = [(8, 1), (4, 2), (1, 8)]
KERNEL = ("params", "Dense_0", "kernel")  # (256, 64): 16384 elements, the one TinyCNN array the rule splits


def _leaf(tree, path):
    for k in path:
        tree = tree[k]
    return tree


def _spec(x) -> P:
    return x.sharding.spec


@pytest.mark.parametrize("shape,fsdp,spec", [
    ((256, 64), 2, P("fsdp", None)),
    ((3, 3, 64, 128), 8, P(None, None, None, "fsdp")),  # the largest divisible dimension
    ((3, 3, 64, 64), 4, P(None, None, None, "fsdp")),  # ties: the last one
    ((100, 200), 8, P(None, "fsdp")),  # 100 is not divisible by 8
    ((1000, 17), 8, P("fsdp", None)),
    ((999, 17), 8, P()),  # no dimension divisible: replicated
    ((64, 64), 2, P()),  # below the size threshold: replicated
    ((256, 64), 1, P()),  # no fsdp axis to split over
    ((), 8, P()),
])
def test_rule_splits_large_arrays_and_replicates_small_ones(shape, fsdp, spec):
    assert sharding.partition_spec(shape, fsdp) == spec


def test_rule_threshold_is_adjustable():
    assert sharding.partition_spec((64, 64), 2, min_size=1) == P(None, "fsdp")


def test_mesh_from_config_resolves_and_validates():
    mesh = sharding.mesh_from_config(mlc.ConfigDict({"data": -1, "fsdp": 2}))
    assert dict(mesh.shape) == {"data": 4, "fsdp": 2}
    assert dict(sharding.mesh_from_config(mlc.ConfigDict({"data": -1, "fsdp": 1})).shape) == {"data": 8, "fsdp": 1}
    # Explicit sizes may use the first devices on one process (tests run whole jobs on one of the 8).
    assert dict(sharding.mesh_from_config(mlc.ConfigDict({"data": 2, "fsdp": 2})).shape) == {"data": 2, "fsdp": 2}
    for data, fsdp in [(4, 4), (-1, 3), (-1, -1), (0, 8)]:
        with pytest.raises(ConfigError) as e:
            sharding.mesh_from_config(mlc.ConfigDict({"data": data, "fsdp": fsdp}))
        assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="does not fit"):
        pipeline.make_mesh(16)
    assert dict(pipeline.make_mesh(1).shape) == {"data": 1, "fsdp": 1}


def test_batches_split_over_data_and_fsdp():
    mesh = pipeline.make_mesh(4, fsdp=2)
    assert pipeline.batch_sharding(mesh).spec == P(("data", "fsdp"))
    assert pipeline.batch_sharding(pipeline.make_mesh(8)).spec == P("data")
    batch = pipeline.to_device({"x": np.arange(16)}, mesh)
    assert len(batch["x"].addressable_shards) == 8
    chex.assert_shape(batch["x"].addressable_shards[0].data, (2,))
    with pytest.raises(ConfigError, match="multiple of the 8"):
        pipeline.check_batch_size(12, mesh)
    pipeline.check_batch_size(16, mesh)


@pytest.fixture(scope="module")
def ctx():
    return make_context(seed=0, devices=1)


def test_init_variables_are_created_sharded(ctx):
    key = jax.random.key(3)
    single = ctx.init_variables(key)
    c = dataclasses.replace(ctx, mesh=pipeline.make_mesh(4, fsdp=2))
    v = c.init_variables(key)
    kernel = _leaf(v, KERNEL)
    assert _spec(kernel) == P("fsdp", None)
    assert {s.data.shape for s in kernel.addressable_shards} == {(128, 64)}
    for path, x in jax.tree_util.tree_flatten_with_path(v)[0]:
        assert x.sharding.mesh.shape == c.mesh.shape
        if tuple(k.key for k in path) != KERNEL:
            assert _spec(x) == P(), path
    chex.assert_trees_all_close(jax.device_get(v), jax.device_get(single), rtol=1e-6, atol=1e-7)


def test_optimizer_state_and_teacher_follow_their_parameters():
    model = TinyCNN(10)
    variables = jax.device_get(
        model.init({"params": jax.random.key(0)}, jnp.zeros((1, 8, 8, 1)), train=False))
    mesh = pipeline.make_mesh(1, fsdp=8)
    state = create_state(model, variables, optax.adamw(1e-3), mesh)
    teacher = place(variables, mesh)  # how LoTUS, SCRUB and Bad Teacher place their frozen teacher
    assert _spec(_leaf(state.params, KERNEL[1:])) == P("fsdp", None)
    adam = state.opt_state[0]
    for tree in (adam.mu, adam.nu, teacher["params"]):
        for p, x in zip(jax.tree.leaves(state.params), jax.tree.leaves(tree), strict=True):
            assert x.sharding == p.sharding
    assert _spec(adam.count) == P() and _spec(state.step) == P()


def _batch(n=16):
    rng = np.random.default_rng(0)
    return {"image": rng.integers(0, 256, (n, 8, 8, 1), dtype=np.uint8),
            "label": rng.integers(0, 10, n).astype(np.int32),
            "mask": np.arange(n) < n - 3, "forget": (np.arange(n) % 3 == 0).astype(np.int32)}


def _prep(images):
    return (images.astype(jnp.float32) / 255.0 - 0.3) / 0.4


def _two_lotus_steps(mesh):
    """Two LoTUS steps (SGD with momentum) from the same start; the final state and losses."""
    model = TinyCNN(10)
    variables = jax.device_get(
        model.init({"params": jax.random.key(0)}, jnp.zeros((1, 8, 8, 1)), train=False))
    state = create_state(model, variables, optax.sgd(0.05, momentum=0.9), mesh)
    teacher = place(variables, mesh)
    batch = pipeline.to_device(_batch(), mesh)
    step = jax.jit(functools.partial(lotus.lotus_step, prep=_prep), donate_argnums=0)
    state, m1 = step(state, batch, teacher, jnp.float32(1.5), jax.random.key(7))
    state, m2 = step(state, batch, teacher, jnp.float32(0.8), jax.random.key(8))
    return state, [float(m1["loss"]), float(m2["loss"])]


@pytest.fixture(scope="module")
def single_device_steps():
    state, losses = _two_lotus_steps(pipeline.make_mesh(1))
    return jax.device_get(variables_of(state)), losses


@pytest.mark.parametrize("shape", MESHES)
def test_lotus_step_on_mesh_equals_single_device(shape, single_device_steps):
    mesh = pipeline.make_mesh(*shape[:1], fsdp=shape[1])
    state, losses = _two_lotus_steps(mesh)
    expected, expected_losses = single_device_steps
    np.testing.assert_allclose(losses, expected_losses, rtol=1e-5)
    chex.assert_trees_all_close(jax.device_get(variables_of(state)), expected, rtol=1e-5, atol=1e-5)
    # The updated parameters stay where the rule puts them, so the next step does not recompile.
    rule = sharding.shardings(state.params, mesh)
    for x, s in zip(jax.tree.leaves(state.params), jax.tree.leaves(rule, is_leaf=lambda s: isinstance(
            s, NamedSharding)), strict=True):
        assert x.sharding.is_equivalent_to(s, x.ndim)


@pytest.mark.parametrize("shape", MESHES)
def test_evaluation_on_mesh_equals_single_device(shape, ctx):
    variables = ctx.init_variables(jax.random.key(1))
    expected = ctx.evaluate(variables, "val", keep_probs=True)
    c = dataclasses.replace(ctx, mesh=pipeline.make_mesh(shape[0], fsdp=shape[1]))
    got = c.evaluate(c.init_variables(jax.random.key(1)), "val", keep_probs=True)
    np.testing.assert_array_equal(got.labels, expected.labels)
    np.testing.assert_array_equal(got.correct, expected.correct)
    np.testing.assert_array_equal(got.counts, expected.counts)
    np.testing.assert_allclose(got.entropy, expected.entropy, rtol=1e-5)
    np.testing.assert_allclose(got.probs, expected.probs, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(got.prob_sums, expected.prob_sums, rtol=1e-5)


def test_checkpoint_restores_into_the_rule(ctx, tmp_path):
    variables = jax.device_get(ctx.init_variables(jax.random.key(2)))
    checkpoint.save(tmp_path / "ck", variables)
    mesh = pipeline.make_mesh(4, fsdp=2)
    restored = checkpoint.restore(tmp_path / "ck", jax.eval_shape(ctx.init_fn, jax.random.key(0)), mesh)
    assert _spec(_leaf(restored, KERNEL)) == P("fsdp", None)
    assert _spec(restored["batch_stats"]["BatchNorm_0"]["mean"]) == P()
    chex.assert_trees_all_equal(jax.device_get(restored), variables)
