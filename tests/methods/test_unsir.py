"""UNSIR: error-maximising noise, impair then repair; forgets a class and keeps the retain set."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lotus_jax.errors import ConfigError
from lotus_jax import methods
from lotus_jax.methods import unsir
from lotus_jax.train.optim import optimizer_config


def test_noise_maximises_error_of_original(class_problem):
    ctx, original = class_problem
    classes = jnp.asarray([0, 3], jnp.int32)
    noise0 = jax.random.normal(jax.random.key(1), (2, 8, 8, 1))
    learn = jax.jit(functools.partial(unsir.learn_noise, ctx.model.apply, steps=20, lr=0.1, lam=0.1))
    noise, ce = learn(original, classes, noise0)
    ce0 = optax.softmax_cross_entropy_with_integer_labels(ctx.model.apply(original, noise0, train=False), classes)
    assert noise.shape == noise0.shape
    assert float(ce) > 2.0 * float(jnp.mean(ce0))


def test_retain_per_class_subset_caps_each_class():
    labels = np.repeat(np.arange(3), 10)
    retain = np.arange(30)[::2]
    sub = unsir.retain_per_class_subset(retain, labels, 3, seed=0)
    assert np.all(np.bincount(labels[sub]) == 3) and np.all(np.isin(sub, retain))
    assert np.array_equal(unsir.retain_per_class_subset(retain, labels, None, 0), retain)


def test_impair_epochs_must_fit(class_problem):
    ctx, original = class_problem
    cfg = unsir.default_config()
    cfg.impair_epochs = 11
    with pytest.raises(ConfigError):
        methods.unlearn(ctx, "unsir", original, cfg, jax.random.key(0))


def test_sample_level_noise_for_every_forget_class(problem):
    ctx, original = problem
    cfg = unsir.default_config()
    cfg.epochs, cfg.impair_epochs = 0, 0
    res = methods.unlearn(ctx, "unsir", original, cfg, jax.random.key(0))
    assert res.extra["noise_classes"] == np.unique(ctx.dataset.train.labels[ctx.splits.forget]).tolist()


def test_lowers_forget_accuracy_keeps_retain(class_problem):
    ctx, original = class_problem
    cfg = unsir.default_config()
    cfg.epochs, cfg.batch_size = 2, 32
    cfg.optimizer = optimizer_config("sgd", 1e-2, 0.0, momentum=0.9)
    res = methods.unlearn(ctx, "unsir", original, cfg, jax.random.key(7))
    assert [h["epoch"] for h in res.history] == [1, 2]
    plan = unsir.plan(ctx, original, cfg, jax.random.key(7))
    assert [[p.name for p in plan.phases(epoch, {})] for epoch in range(2)] == [["impair"], ["repair"]]
    assert res.extra["noise_classes"] == [0]
    assert ctx.evaluate(original, "forget").accuracy == pytest.approx(1.0)
    assert ctx.evaluate(res.variables, "forget").accuracy < 0.95
    assert ctx.evaluate(res.variables, "retain").accuracy > 0.95
