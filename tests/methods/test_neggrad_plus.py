"""NegGrad+: the step really ascends on the forget loss (update linear in beta, beta=0 raises the forget
CE), the retain/forget pairing, and the driver raising the forget CE while retain accuracy holds."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np
import pytest

from lotus_jax import config, methods
from lotus_jax.data import make_mesh, to_device
from lotus_jax.errors import ConfigError
from lotus_jax.methods import neggrad_plus
from lotus_jax.train import runner
from lotus_jax.train.runner import Plan
from tests.methods.test_finetune import mean_ce, prep, tiny_state
from tests.train.toy import Recorder, counting_state, recorded, recording_step, toy_context, toy_source

STEP = jax.jit(functools.partial(neggrad_plus.neggrad_plus_step, prep=prep))


def _pair():
    """(state with plain SGD lr 0.1, device pair): retain = the tiny batch, forget = its images reversed."""
    state, batch = tiny_state(False)
    retain = {k: batch[k] for k in ("image", "label", "mask")}
    forget = {"image": batch["image"][::-1].copy(), "label": batch["target"], "mask": batch["mask"]}
    return state, to_device({"retain": retain, "forget": forget}, make_mesh(1))


def test_default_config_follows_spec():
    cfg = neggrad_plus.default_config()
    assert cfg.epochs == 10 and cfg.beta == 0.999 and cfg.optimizer.name == "sgd"
    assert (cfg.optimizer.lr, cfg.optimizer.weight_decay, cfg.optimizer.momentum) == (1e-3, 5e-4, 0.9)


def test_update_is_linear_in_beta():
    # Plain SGD: update(beta) = -lr * (beta * g_r - (1 - beta) * g_f) = beta * update(1) + (1 - beta) * update(0).
    state, pair = _pair()
    upd = {b: jax.tree.map(jnp.subtract, STEP(state, pair, jnp.float32(b))[0].params, state.params)
           for b in (0.0, 0.3, 1.0)}
    mixed = jax.tree.map(lambda u1, u0: 0.3 * u1 + 0.7 * u0, upd[1.0], upd[0.0])
    for a, b in zip(jax.tree.leaves(upd[0.3]), jax.tree.leaves(mixed)):
        np.testing.assert_allclose(a, b, atol=1e-6)
    assert any(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(upd[0.0]), jax.tree.leaves(upd[1.0])))


def test_beta_zero_ascends_on_the_forget_batch_and_beta_one_descends_on_retain():
    state, pair = _pair()
    s0, m0 = STEP(state, pair, jnp.float32(0.0))
    np.testing.assert_allclose(m0["loss"], -m0["forget_ce"], rtol=1e-6)
    _, m0_next = STEP(s0, pair, jnp.float32(0.0))
    assert m0_next["forget_ce"] > m0["forget_ce"] + 1e-3
    s1, m1 = STEP(state, pair, jnp.float32(1.0))
    _, m1_next = STEP(s1, pair, jnp.float32(1.0))
    assert m1_next["retain_ce"] < m1["retain_ce"] - 1e-3


def test_pairs_cover_retain_once_and_cycle_forget(problem):
    # The plan pairs D_r and D_f in one phase ...
    ctx, original = problem
    phase = neggrad_plus.plan(ctx, original, neggrad_plus.default_config(), jax.random.key(0)).phases(0, {})[0]
    assert set(phase.indices) == {"retain", "forget"}
    np.testing.assert_array_equal(phase.indices["retain"], ctx.splits.retain)
    np.testing.assert_array_equal(phase.indices["forget"], ctx.splits.forget)
    # ... and the runner makes the pairs: that phase on a toy source, with a step recording its batches.
    n_retain, n_forget, bs = 50, 12, 8
    toy = toy_context(toy_source(n_retain + n_forget))
    retain, forget = np.arange(n_retain), np.arange(n_retain, n_retain + n_forget)

    def pairs(retain_side, forget_side):
        rec = Recorder()
        paired = dataclasses.replace(phase, step=recording_step(rec), args=(),
                                     indices={"retain": retain_side, "forget": forget_side})
        plan = Plan(state=counting_state(), batch_size=bs, epochs=1, finish=lambda s: s,
                    phases=lambda epoch, info: [paired])
        runner.run(toy, "neggrad_plus", lambda: plan, {}, jax.random.key(0))
        return recorded(rec, "retain"), recorded(rec, "forget")

    seen_r, seen_f = pairs(retain, forget)
    assert len(seen_r) == len(seen_f) == 7  # ceil(50 / 8) retain batches; the 2-batch forget set cycles
    np.testing.assert_array_equal(np.sort(np.concatenate(seen_r)), retain)
    counts = np.bincount(np.concatenate(seen_f) - n_retain, minlength=n_forget)
    assert counts.min() >= 3 and counts.max() <= 4  # 3.5 passes over the forget set, each complete pass once
    # Both sides swap roles when the forget set is the larger one.
    seen_r, seen_f = pairs(forget, retain)
    assert len(seen_r) == len(seen_f) == 7
    np.testing.assert_array_equal(np.sort(np.concatenate(seen_f)), retain)


def test_invalid_beta_is_rejected():
    # Checked with the rest of the config before any work starts (lotus_jax.config.validate).
    cfg = neggrad_plus.default_config()
    cfg.beta = 1.5
    with pytest.raises(ConfigError, match="beta"):
        config.validate(mlc.ConfigDict({"neggrad_plus": cfg}))
    cfg.beta = 0.7
    config.validate(mlc.ConfigDict({"neggrad_plus": cfg}))


def _run(ctx, original, beta):
    cfg = neggrad_plus.default_config()
    cfg.update(dict(epochs=3, batch_size=64, beta=beta))
    cfg.optimizer.lr = 0.05
    return methods.unlearn(ctx, "neggrad_plus", original, cfg, jax.random.key(0))


def test_driver_raises_forget_loss_and_keeps_retain_accuracy(problem):
    ctx, original = problem
    res = _run(ctx, original, 0.7)
    before, after = mean_ce(ctx, original, "forget"), mean_ce(ctx, res.variables, "forget")
    descent_only = mean_ce(ctx, _run(ctx, original, 1.0).variables, "forget")
    assert after > 1.5 * before and after > 1.5 * descent_only
    assert ctx.evaluate(res.variables, "retain").accuracy >= 0.9
    assert [h["epoch"] for h in res.history] == [1, 2, 3]
    assert all(np.isfinite(h["forget_ce"]) and np.isfinite(h["retain_ce"]) for h in res.history)
