"""Finetune and the shared cross-entropy step: labels from 'target', the masked update that cannot move
unmasked parameters, the driver descending on D_r without ever reading D_f."""

import dataclasses
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from lotus_jax.data import make_mesh, to_device
from lotus_jax.data.sources import ArraySource
from lotus_jax import methods
from lotus_jax.methods import finetune
from lotus_jax.models import init_function, jit_init
from lotus_jax.train.state import create_state
from tests.methods.helpers import TinyCNN


def mean_ce(ctx, variables, split: str) -> float:
    """Mean cross-entropy -log p(y|x) of the model (inference mode) over a split."""
    s = ctx.evaluate(variables, split, keep_probs=True)
    return float(-np.mean(np.log(np.maximum(s.probs[np.arange(len(s.labels)), s.labels], 1e-30))))


def prep(images):
    return (images.astype(jnp.float32) / 255.0 - 0.3) / 0.4


@functools.cache
def tiny_state(decay_and_momentum: bool):
    """A TinyCNN train state (SGD lr 0.1, optionally weight decay 5e-4 and momentum 0.9; never donated, so
    cached) and a host batch with 3 padded rows and 'target' labels = 'label' + 3 mod 10."""
    model = TinyCNN(10)
    variables = jit_init(init_function(model, jnp.zeros((1, 8, 8, 1))))(jax.random.key(0))
    tx = (optax.chain(optax.add_decayed_weights(5e-4), optax.sgd(0.1, momentum=0.9)) if decay_and_momentum
          else optax.sgd(0.1))
    state = create_state(model, variables, tx, make_mesh(1))
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 16).astype(np.int32)
    batch = {"image": rng.integers(0, 256, (16, 8, 8, 1), dtype=np.uint8), "label": labels,
             "target": (labels + 3) % 10, "mask": np.arange(16) < 13}
    return state, batch


# One jitted step shared by the tests below (two compiles in all: with and without a parameter mask).
STEP = jax.jit(functools.partial(finetune.ce_step, prep=prep))


def test_default_config_follows_spec():
    cfg = finetune.default_config()
    assert cfg.epochs == 10 and cfg.optimizer.name == "sgd"
    assert (cfg.optimizer.lr, cfg.optimizer.weight_decay, cfg.optimizer.momentum) == (1e-3, 5e-4, 0.9)


def test_step_trains_on_target_when_present():
    state, batch = tiny_state(False)
    mesh = make_mesh(1)
    loss = lambda b: float(STEP(state, to_device(b, mesh), None)[1]["loss"])  # noqa: E731
    base = loss(batch)
    assert loss({**batch, "label": (batch["label"] + 5) % 10}) == base  # 'label' is ignored ...
    assert abs(loss({**batch, "target": batch["label"]}) - base) > 1e-3  # ... 'target' is what counts


def test_all_true_mask_equals_the_plain_step():
    state, batch = tiny_state(True)
    batch = to_device(batch, make_mesh(1))
    everything = jax.tree.map(lambda p: jnp.ones(p.shape, bool), state.params)
    a, b = state, state
    for _ in range(3):
        a, _ = STEP(a, batch, None)
        b, _ = STEP(b, batch, everything)
    chex.assert_trees_all_close(a.params, b.params, rtol=1e-6, atol=1e-7)
    chex.assert_trees_all_close(a.batch_stats, b.batch_stats)


def test_masked_step_leaves_unmasked_parameters_bit_identical():
    # Weight decay and momentum would move every parameter if only the gradients were masked.
    state, batch = tiny_state(True)
    batch = to_device(batch, make_mesh(1))
    rng = np.random.default_rng(1)
    mask = jax.tree.map(lambda p: jnp.asarray(rng.random(p.shape) < 0.3), state.params)
    before = jax.device_get(state.params)
    for _ in range(3):
        state, _ = STEP(state, batch, mask)
    after = jax.device_get(state.params)
    for p0, p1, m in zip(jax.tree.leaves(before), jax.tree.leaves(after), jax.tree.leaves(jax.device_get(mask))):
        assert np.array_equal(p0[~m], p1[~m])
        assert not np.array_equal(p0[m], p1[m])


def test_driver_descends_on_retain_and_keeps_accuracy(problem):
    ctx, original = problem
    cfg = finetune.default_config()
    cfg.update(dict(epochs=2, batch_size=64))
    cfg.optimizer.lr = 0.01
    lines = []
    res = methods.unlearn(dataclasses.replace(ctx, log=lines.append), "finetune", original, cfg, jax.random.key(0))
    assert [h["epoch"] for h in res.history] == [1, 2] and res.time_s > 0
    assert sum("epoch" in line for line in lines) == 2
    assert mean_ce(ctx, res.variables, "retain") < 0.95 * mean_ce(ctx, original, "retain")
    assert ctx.evaluate(res.variables, "retain").accuracy >= 0.95
    changed = jax.tree.map(lambda a, b: not np.array_equal(a, b), jax.device_get(res.variables["params"]),
                           jax.device_get(original["params"]))
    assert all(jax.tree.leaves(changed))


def test_driver_never_reads_the_forget_set(problem):
    ctx, original = problem
    train = ctx.dataset.train
    images, labels = train.get(np.arange(len(train))).copy(), train.labels.copy()
    rng = np.random.default_rng(0)
    images[ctx.splits.forget] = rng.integers(0, 256, images[ctx.splits.forget].shape, dtype=np.uint8)
    labels[ctx.splits.forget] = (labels[ctx.splits.forget] + 1) % ctx.num_classes
    scrambled = dataclasses.replace(ctx, dataset=dataclasses.replace(
        ctx.dataset, train=ArraySource(images, labels, train.class_names)))
    cfg = finetune.default_config()
    cfg.update(dict(epochs=1, batch_size=64))
    a = methods.unlearn(ctx, "finetune", original, cfg, jax.random.key(0))
    b = methods.unlearn(scrambled, "finetune", original, cfg, jax.random.key(0))
    chex.assert_trees_all_equal(jax.device_get(a.variables), jax.device_get(b.variables))
    assert not np.array_equal(jax.tree.leaves(jax.device_get(a.variables))[0],
                              jax.tree.leaves(jax.device_get(original))[0])
