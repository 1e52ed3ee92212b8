"""SalUn: the global top-fraction mask, the forget gradient accumulated over padded batches, and the driver:
unmasked parameters bit-identical, about 10% of parameters masked, forget accuracy gone in class unlearning."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lotus_jax.data import make_mesh
from lotus_jax.errors import ConfigError
from lotus_jax import methods
from lotus_jax.methods import salun


def test_default_config_follows_spec():
    cfg = salun.default_config()
    assert cfg.epochs == 10 and cfg.mask_fraction == 0.10 and cfg.optimizer.name == "sgd"
    assert (cfg.optimizer.lr, cfg.optimizer.weight_decay, cfg.optimizer.momentum) == (1e-3, 5e-4, 0.9)


def test_mask_ranks_all_parameters_globally():
    scores = {"a": jnp.array([[10.0, -9.0], [8.0, 0.0]]), "b": jnp.array([1.0, 2.0, -3.0])}
    mask = jax.device_get(salun.top_fraction_mask(scores, 3))
    np.testing.assert_array_equal(mask["a"], [[True, True], [True, False]])
    np.testing.assert_array_equal(mask["b"], [False, False, False])  # a per-tensor rule would pick from b too
    mask = jax.device_get(salun.top_fraction_mask(scores, 4))
    np.testing.assert_array_equal(mask["b"], [False, False, True])  # |-3| is the 4th largest
    ties = jax.device_get(salun.top_fraction_mask({"a": jnp.ones(3), "b": jnp.ones(2)}, 2))
    np.testing.assert_array_equal(ties["a"], [True, True, False])
    assert not ties["b"].any()


def test_forget_gradient_is_the_full_forget_set_gradient(problem):
    ctx, original = problem
    grads = salun.forget_gradient(ctx, original, batch_size=48)  # 126 forget examples: a padded last batch
    images = ctx.prep(jnp.asarray(ctx.dataset.train.get(ctx.splits.forget)))
    labels = jnp.asarray(ctx.dataset.train.labels[ctx.splits.forget])

    def loss(params):
        logits = ctx.model.apply({**original, "params": params}, images, train=False)
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))

    expected = jax.jit(jax.grad(loss))(original["params"])
    for a, b in zip(jax.tree.leaves(jax.device_get(grads)), jax.tree.leaves(jax.device_get(expected))):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)


def test_mask_is_the_same_on_8_devices(problem):
    ctx, original = problem  # `original` lives on one device; the 8-device pass must place it itself
    one = salun.saliency_mask(ctx, original, 0.1, 48)
    eight = salun.saliency_mask(dataclasses.replace(ctx, mesh=make_mesh(8)), original, 0.1, 48)
    for a, b in zip(jax.tree.leaves(jax.device_get(one)), jax.tree.leaves(jax.device_get(eight))):
        np.testing.assert_array_equal(a, b)


def test_invalid_fraction_is_rejected(problem):
    ctx, original = problem
    with pytest.raises(ConfigError, match="mask_fraction"):
        salun.saliency_mask(ctx, original, 1.5, 64)


def test_driver_moves_only_salient_parameters_and_forgets_the_class(class_problem):
    ctx, original = class_problem
    cfg = salun.default_config()
    cfg.update(dict(epochs=2, batch_size=64))
    cfg.optimizer.lr = 0.02
    lines = []
    res = methods.unlearn(dataclasses.replace(ctx, log=lines.append), "salun", original, cfg, jax.random.key(0))
    mask = jax.device_get(salun.saliency_mask(ctx, original, cfg.mask_fraction, cfg.batch_size))
    before, after = jax.device_get(original["params"]), jax.device_get(res.variables["params"])
    total = sum(m.size for m in jax.tree.leaves(mask))
    n_masked = sum(int(m.sum()) for m in jax.tree.leaves(mask))
    assert n_masked == int(0.1 * total) == res.extra["masked_parameters"]
    assert abs(res.extra["mask_fraction"] - 0.1) < 1e-3 and res.extra["total_parameters"] == total
    # Global threshold: tensors get very different shares of the 10%.
    shares = [m.mean() for m in jax.tree.leaves(mask)]
    assert max(shares) - min(shares) > 0.1
    moved = 0
    for p0, p1, m in zip(jax.tree.leaves(before), jax.tree.leaves(after), jax.tree.leaves(mask)):
        assert np.array_equal(p0[~m], p1[~m])
        moved += int(np.sum(p0[m] != p1[m]))
    assert moved > 0.5 * n_masked
    # BatchNorm running statistics are not parameters: they follow the training batches.
    assert not np.array_equal(jax.tree.leaves(original["batch_stats"])[0],
                              jax.tree.leaves(res.variables["batch_stats"])[0])
    acc_before = ctx.evaluate(original, "forget").accuracy
    assert acc_before > 0.95 and ctx.evaluate(res.variables, "forget").accuracy < acc_before - 0.5
    assert ctx.evaluate(res.variables, "retain").accuracy >= 0.95
    assert [h["epoch"] for h in res.history] == [1, 2] and sum("epoch" in line for line in lines) == 2
