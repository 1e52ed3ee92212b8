"""Random labels: the wrong-label sampler (never the true label, uniform over the others, fresh per seed)
and the driver lowering forget accuracy in class unlearning while retain accuracy holds."""

import dataclasses

import jax
import numpy as np
import pytest
from scipy import stats

from lotus_jax.errors import ConfigError
from lotus_jax import methods
from lotus_jax.methods import random_labels


def test_default_config_follows_spec():
    cfg = random_labels.default_config()
    assert cfg.epochs == 10 and cfg.optimizer.name == "sgd"
    assert (cfg.optimizer.lr, cfg.optimizer.weight_decay, cfg.optimizer.momentum) == (1e-3, 5e-4, 0.9)


def test_wrong_labels_never_true_and_uniform_over_the_other_classes():
    k, n = 7, 70_000
    labels = np.arange(n) % k
    drawn = random_labels.wrong_labels(labels, k, np.random.default_rng(0))
    assert drawn.shape == labels.shape and drawn.dtype == np.int32
    assert not np.any(drawn == labels)
    for y in range(k):
        others = np.bincount(drawn[labels == y], minlength=k)
        assert others[y] == 0 and np.all(np.delete(others, y) > 0)
        # Chi-squared test of uniformity over the k - 1 other classes.
        assert stats.chisquare(np.delete(others, y)).pvalue > 1e-4


def test_wrong_labels_are_seeded_and_fresh_per_epoch():
    labels = np.arange(1000) % 10
    a = random_labels.wrong_labels(labels, 10, np.random.default_rng([0, 21, 0]))
    np.testing.assert_array_equal(a, random_labels.wrong_labels(labels, 10, np.random.default_rng([0, 21, 0])))
    assert np.mean(a != random_labels.wrong_labels(labels, 10, np.random.default_rng([0, 21, 1]))) > 0.5
    with pytest.raises(ConfigError, match="2 classes"):
        random_labels.wrong_labels(np.zeros(3, int), 1, np.random.default_rng(0))


def test_driver_lowers_forget_accuracy_in_class_unlearning(class_problem):
    ctx, original = class_problem
    cfg = random_labels.default_config()
    cfg.update(dict(epochs=2, batch_size=64))
    cfg.optimizer.lr = 0.01
    lines = []
    res = methods.unlearn(dataclasses.replace(ctx, log=lines.append), "random_labels", original, cfg, jax.random.key(0))
    before = ctx.evaluate(original, "forget").accuracy
    after = ctx.evaluate(res.variables, "forget").accuracy
    assert before > 0.95 and after < before - 0.3
    assert ctx.evaluate(res.variables, "retain").accuracy >= 0.95
    assert [h["epoch"] for h in res.history] == [1, 2] and sum("epoch" in line for line in lines) == 2
    # Fitting random labels is hard: the forget loss is far above the retain loss.
    assert all(h["forget_loss"] > 10 * h["retain_loss"] for h in res.history)
