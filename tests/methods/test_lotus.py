"""LoTUS: targets, loss, temperature and stopping rule against hand-computed values and textbook
identities; the jitted step (no recompiles, sharded == single device); the driver on a tiny problem."""

import dataclasses
import functools
import math
import time

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import integrate

from lotus_jax import methods
from lotus_jax.data import make_mesh, to_device
from lotus_jax.methods import lotus
from lotus_jax.models import init_function, jit_init
from lotus_jax.train.context import Context
from lotus_jax.train.losses import soft_cross_entropy
from lotus_jax.train.state import create_state, place, variables_of
from tests.methods.helpers import TinyCNN


class TargetsTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    def test_retain_targets_are_one_hot_samples_of_softmax(self):
        z = jnp.array([[2.0, 0.5, -1.0, 0.0]])
        n = 100_000
        fn = self.variant(lambda k: lotus.retain_targets(jnp.tile(z, (n, 1)), k))
        t = np.asarray(fn(jax.random.key(0)))
        np.testing.assert_array_equal(t.sum(1), 1.0)
        self.assertTrue(set(np.unique(t)) <= {0.0, 1.0})
        freq = t.mean(0)
        p = np.asarray(jax.nn.softmax(z[0]))
        # Binomial standard error; 5 sigma.
        np.testing.assert_array_less(np.abs(freq - p), 5 * np.sqrt(p * (1 - p) / n) + 1e-12)

    def test_retain_target_is_a_sample_not_the_argmax(self):
        z = jnp.tile(jnp.array([[1.0, 0.9]]), (10_000, 1))
        t = np.asarray(lotus.retain_targets(z, jax.random.key(1)))
        self.assertGreater(t[:, 1].mean(), 0.4)  # softmax gives class 1 about 47.5%

    @chex.variants(with_jit=True, without_jit=True)
    def test_forget_targets_mean_matches_expectation_two_classes(self):
        # For 2 classes, target_0 = sigmoid((d + L) / tau) with d = z0 - z1 and L = g0 - g1 ~ Logistic(0, 1).
        d, tau, n = 1.3, 2.5, 200_000
        expected, _ = integrate.quad(
            lambda l: 1 / (1 + math.exp(-(d + l) / tau)) * math.exp(-l) / (1 + math.exp(-l)) ** 2, -60, 60)
        z = jnp.tile(jnp.array([[d, 0.0]]), (n, 1))
        t = np.asarray(self.variant(lotus.forget_targets)(z, jnp.float32(tau), jax.random.key(2)))
        np.testing.assert_allclose(t.sum(1), 1.0, rtol=1e-5)
        se = t[:, 0].std() / math.sqrt(n)
        self.assertLess(abs(t[:, 0].mean() - expected), 5 * se)

    def test_forget_targets_limits(self):
        z = jnp.tile(jnp.array([[3.0, 1.0, 0.0]]), (50_000, 1))
        key = jax.random.key(3)
        cold = np.asarray(lotus.forget_targets(z, jnp.float32(1e-3), key))
        # tau -> 0: one-hot Gumbel-max samples (but for near-ties), frequencies = softmax(z).
        self.assertGreater(np.mean(cold.max(1) > 0.999), 0.99)
        np.testing.assert_allclose(cold.mean(0), jax.nn.softmax(z[0]), atol=0.01)
        hot = np.asarray(lotus.forget_targets(z, jnp.float32(1e4), key))
        np.testing.assert_allclose(hot, 1 / 3, atol=1e-2)  # tau -> inf: uniform

    def test_lotus_targets_select_by_flag_with_independent_draws(self):
        z = jnp.array([[5.0, 0.0], [5.0, 0.0], [0.0, 0.0]])
        flag = jnp.array([1, 0, 0])
        key = jax.random.key(4)
        t = lotus.lotus_targets(z, flag, jnp.float32(1.0), key)
        kf, kr = jax.random.split(key)
        np.testing.assert_allclose(t[0], lotus.forget_targets(z, jnp.float32(1.0), kf)[0])
        np.testing.assert_allclose(t[1:], lotus.retain_targets(z, kr)[1:])


def test_soft_cross_entropy_hand_computed():
    logits = jnp.array([[0.0, math.log(3.0)], [1.0, 1.0], [9.0, -9.0]])
    targets = jnp.array([[0.5, 0.5], [1.0, 0.0], [0.0, 1.0]])
    mask = jnp.array([True, True, False])
    # Row 0: p = (1/4, 3/4): -(0.5 ln 1/4 + 0.5 ln 3/4). Row 1: ln 2. Row 2 is padding.
    row0 = -(0.5 * math.log(0.25) + 0.5 * math.log(0.75))
    expected = (row0 + math.log(2.0)) / 2
    np.testing.assert_allclose(soft_cross_entropy(logits, targets, mask), expected, rtol=1e-6)


@pytest.mark.parametrize("acc_f,acc_u,alpha,decimals,tau", [
    (1.0, 0.9, 8.0, None, math.exp(0.8)),
    (0.93, 0.93, 2.0, None, 1.0),
    (0.8, 0.9, 2.0, None, math.exp(-0.2)),
    (0.996, 0.904, 8.0, 2, math.exp(8 * 0.10)),  # compat: rounded to 1.00 and 0.90
])
def test_temperature(acc_f, acc_u, alpha, decimals, tau):
    assert lotus.temperature(acc_f, acc_u, alpha, decimals) == pytest.approx(tau, rel=1e-12)


@pytest.mark.parametrize("acc_f,acc_u,decimals,stop", [
    (0.90, 0.91, None, True),     # d = -0.01: stops (<=)
    (0.901, 0.91, None, False),   # d = -0.009
    (0.904, 0.914, None, True),   # d = -0.01 up to float error
    (0.904, 0.912, 2, True),      # compat: 0.90 - 0.91
    (0.904, 0.912, None, False),  # full precision: -0.008
    (1.0, 0.5, None, False),
])
def test_stopping_rule(acc_f, acc_u, decimals, stop):
    assert lotus.should_stop(acc_f, acc_u, -0.01, decimals) is stop
    assert lotus.should_stop(acc_f, acc_u, None, decimals) is False


def test_retain_subset_is_seeded_sorted_and_sized():
    retain = np.arange(100, 1100)
    a = lotus.retain_subset(retain, 0.3, seed=1)
    assert len(a) == 300 and np.all(np.diff(a) > 0) and set(a) <= set(retain)
    np.testing.assert_array_equal(a, lotus.retain_subset(retain, 0.3, seed=1))
    assert not np.array_equal(a, lotus.retain_subset(retain, 0.3, seed=2))


def _state_and_batch(mesh, tx, n=16):
    """(student state, frozen teacher on the mesh, device batch with 3 padded rows and every 3rd row forget)."""
    model = TinyCNN(10)
    variables = jit_init(init_function(model, jnp.zeros((1, 8, 8, 1))))(jax.random.key(0))
    state = create_state(model, variables, tx, mesh)
    rng = np.random.default_rng(0)
    batch = {"image": rng.integers(0, 256, (n, 8, 8, 1), dtype=np.uint8),
             "label": rng.integers(0, 10, n).astype(np.int32),
             "mask": np.arange(n) < n - 3, "forget": (np.arange(n) % 3 == 0).astype(np.int32)}
    return state, place(variables, mesh), to_device(batch, mesh)


def _prep(images):
    return (images.astype(jnp.float32) / 255.0 - 0.3) / 0.4


def test_step_does_not_recompile_for_new_temperature():
    mesh = make_mesh(1)
    state, teacher, batch = _state_and_batch(mesh, optax.adamw(1e-3, weight_decay=5e-4))
    teacher_before = jax.device_get(teacher)
    step = jax.jit(functools.partial(lotus.lotus_step, prep=_prep))
    s1, m1 = step(state, batch, teacher, jnp.float32(1.0), jax.random.key(0))
    s2, m2 = step(s1, batch, teacher, jnp.float32(3.7), jax.random.key(1))
    assert step._cache_size() == 1
    assert np.isfinite(float(m1["loss"])) and np.isfinite(float(m2["loss"]))
    # The teacher never moves; the student does.
    chex.assert_trees_all_equal(jax.device_get(teacher), teacher_before)
    assert not np.allclose(jax.tree.leaves(s2.params)[0], jax.tree.leaves(state.params)[0])


def test_step_matches_manual_computation():
    """Loss of the step = soft CE of student logits (train-mode BN on valid rows) vs lotus_targets."""
    mesh = make_mesh(1)
    state, teacher, batch = _state_and_batch(mesh, optax.sgd(0.1))
    key, tau = jax.random.key(5), jnp.float32(2.0)
    _, metrics = jax.jit(functools.partial(lotus.lotus_step, prep=_prep))(state, batch, teacher, tau, key)
    x = _prep(batch["image"])
    z = state.apply_fn(teacher, x, train=False)
    targets = lotus.lotus_targets(z, batch["forget"], tau, key)
    logits, _ = state.apply_fn({"params": state.params, "batch_stats": state.batch_stats}, x, train=True,
                               mask=batch["mask"], mutable=["batch_stats"])
    np.testing.assert_allclose(metrics["loss"], soft_cross_entropy(logits, targets, batch["mask"]), rtol=1e-5)


# Catches: a LoTUS step whose student keeps its old BatchNorm running statistics (e.g. `lotus_step` returning
# `state.batch_stats` instead of the statistics of its training-mode forward pass), or one that updates them
# over the padded rows too (the mask ignored).
def test_step_updates_the_students_batchnorm_statistics_over_valid_rows():
    mesh = make_mesh(1)
    state, teacher, batch = _state_and_batch(mesh, optax.sgd(0.1))
    before = jax.device_get(state.batch_stats)
    new, _ = jax.jit(functools.partial(lotus.lotus_step, prep=_prep))(state, batch, teacher, jnp.float32(2.0),
                                                                       jax.random.key(5))
    after = jax.device_get(new.batch_stats)
    changed = jax.tree.map(lambda a, b: not np.allclose(a, b), before, after)
    assert all(jax.tree.leaves(changed)), f"BatchNorm statistics not updated by the step: {changed}"
    # Exactly what a training-mode forward of the student (before the update) computes on the valid rows.
    _, upd = state.apply_fn({"params": state.params, "batch_stats": state.batch_stats}, _prep(batch["image"]),
                            train=True, mask=batch["mask"], mutable=["batch_stats"])
    chex.assert_trees_all_close(after, jax.device_get(upd["batch_stats"]), rtol=1e-6, atol=1e-7)
    # The teacher's statistics (inference mode) are not what the student carries.
    assert not np.allclose(jax.tree.leaves(after)[0], jax.tree.leaves(jax.device_get(teacher["batch_stats"]))[0])


def test_step_on_8_devices_equals_single_device():
    assert len(jax.devices()) >= 8
    results = []
    for n in (1, 8):
        mesh = make_mesh(n)
        state, teacher, batch = _state_and_batch(mesh, optax.sgd(0.05), n=16)
        step = jax.jit(functools.partial(lotus.lotus_step, prep=_prep))
        state, m = step(state, batch, teacher, jnp.float32(1.5), jax.random.key(7))
        state, m = step(state, batch, teacher, jnp.float32(1.5), jax.random.key(8))
        results.append((jax.device_get(variables_of(state)), float(m["loss"])))
    chex.assert_trees_all_close(results[0][0], results[1][0], atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(results[0][1], results[1][1], rtol=1e-5)


def _cfg(**kw):
    cfg = lotus.default_config()
    cfg.update(dict(epochs=4, batch_size=64, alpha=8.0))
    cfg.optimizer.lr = 1e-3
    cfg.update(kw)
    return cfg


def unlearn(ctx, original, cfg, key):
    return methods.unlearn(ctx, "lotus", original, cfg, key)


def test_driver_history_follows_the_temperature_rule(problem):
    ctx, original = problem
    lines = []
    ctx_log = ctx.log
    ctx.log = lines.append
    try:
        res = unlearn(ctx, original, _cfg(), jax.random.key(0))
    finally:
        ctx.log = ctx_log
    acc_u = res.extra["acc_u"]
    np.testing.assert_allclose(acc_u, ctx.evaluate(original, "val").accuracy)
    assert res.history and res.time_s > 0
    for h in res.history:
        if h["stopped"]:
            assert h["acc_f"] - acc_u <= -0.01 + 1e-9
        else:
            assert h["tau"] == pytest.approx(math.exp(8.0 * (h["acc_f"] - acc_u)))
            assert np.isfinite(h["loss"])
    # The first epoch's acc_f is the original model's forget accuracy.
    np.testing.assert_allclose(res.history[0]["acc_f"], ctx.evaluate(original, "forget").accuracy)
    assert any("acc_f" in line and "tau" in line for line in lines)
    changed = jax.tree.map(lambda a, b: not np.array_equal(a, b), res.variables["params"], original["params"])
    assert any(jax.tree.leaves(changed))
    # The student's BatchNorm running statistics follow its training batches.
    moved = jax.tree.map(lambda a, b: not np.array_equal(a, b), jax.device_get(res.variables["batch_stats"]),
                         jax.device_get(original["batch_stats"]))
    assert all(jax.tree.leaves(moved)), moved


def test_driver_lowers_forget_accuracy_in_class_unlearning(class_problem):
    ctx, original = class_problem
    before = ctx.evaluate(original, "forget").accuracy
    res = unlearn(ctx, original, _cfg(alpha=32.0, epochs=3), jax.random.key(0))
    assert res.extra["acc_u"] == 0.0
    after = ctx.evaluate(res.variables, "forget").accuracy
    assert before > 0.95 and after < before - 0.2
    assert ctx.evaluate(res.variables, "retain").accuracy > 0.85


def test_driver_stops_immediately_when_forget_accuracy_is_already_low(problem):
    ctx, original = problem
    res = unlearn(ctx, original, _cfg(stop_threshold=2.0), jax.random.key(0))
    assert len(res.history) == 1 and res.history[0]["stopped"]
    chex.assert_trees_all_equal(jax.device_get(res.variables), jax.device_get(original))


def test_driver_is_deterministic(problem):
    ctx, original = problem
    a = unlearn(ctx, original, _cfg(epochs=2), jax.random.key(3))
    b = unlearn(ctx, original, _cfg(epochs=2), jax.random.key(3))
    chex.assert_trees_all_equal(jax.device_get(a.variables), jax.device_get(b.variables))
    c = unlearn(ctx, original, _cfg(epochs=2), jax.random.key(4))
    assert not all(jax.tree.leaves(jax.tree.map(np.array_equal, jax.device_get(a.variables),
                                                jax.device_get(c.variables))))


class RecordingContext(Context):
    """A Context that records every `batches` request (indices and extras) and every `evaluate` call, and
    makes each evaluation take `eval_sleep` extra seconds."""

    def __init__(self, ctx: Context, eval_sleep: float = 0.0):
        super().__init__(**{f.name: getattr(ctx, f.name) for f in dataclasses.fields(ctx)})
        self.requests: list[tuple[np.ndarray, dict | None]] = []
        self.evaluations: list[str] = []
        self.eval_sleep = eval_sleep

    def batches(self, indices, batch_size, *, source=None, shuffle_seed=None, extra=None, start_batch=0):
        self.requests.append((np.asarray(indices).copy(), None if extra is None else dict(extra)))
        return super().batches(indices, batch_size, source=source, shuffle_seed=shuffle_seed, extra=extra,
                               start_batch=start_batch)

    def evaluate(self, variables, split, keep_probs=False):
        self.evaluations.append(split)
        time.sleep(self.eval_sleep)
        return super().evaluate(variables, split, keep_probs)


# Catches: LoTUS unlearning on the full retain set D_r (or on an unseeded / wrongly sized subset) instead of
# D_f ∪ D_r', D_r' = `retain_subset(D_r, 0.3, seed)` drawn once with the run's seed.
def test_unlearning_visits_exactly_the_forget_set_and_the_seeded_30_percent_retain_subset(problem):
    ctx, original = problem
    retain, forget = ctx.splits.retain, ctx.splits.forget
    cfg = _cfg(epochs=2, stop_threshold=None)
    assert lotus.default_config().retain_fraction == 0.3
    sub = lotus.retain_subset(retain, 0.3, ctx.seed)
    assert len(sub) == round(0.3 * len(retain)) and set(sub) <= set(retain)
    np.testing.assert_array_equal(sub, lotus.retain_subset(retain, 0.3, ctx.seed))
    assert not np.array_equal(sub, lotus.retain_subset(retain, 0.3, ctx.seed + 1))

    rec = RecordingContext(ctx)
    res = unlearn(rec, original, cfg, jax.random.key(0))
    assert len(res.history) == 2
    passes = [(idx, extra) for idx, extra in rec.requests if extra is not None]  # training passes carry a flag
    assert len(passes) == 2, f"expected one training pass per epoch, got {len(passes)}"
    for idx, extra in passes:
        assert len(idx) == len(forget) + len(sub), (
            f"an epoch visits {len(idx)} examples; |D_f| + |D_r'| = {len(forget)} + {len(sub)}")
        np.testing.assert_array_equal(np.sort(idx), np.sort(np.concatenate([forget, sub])))
        flags = np.asarray(extra["forget"])
        np.testing.assert_array_equal(np.sort(idx[flags == 1]), np.sort(forget))
        np.testing.assert_array_equal(np.sort(idx[flags == 0]), sub)
    # Another seed draws another subset: the phase's examples follow the run's seed.
    other = dataclasses.replace(ctx, seed=ctx.seed + 1)
    phase = lotus.plan(other, original, cfg, jax.random.key(0)).phases(0, {"tau": 1.0})[0]
    np.testing.assert_array_equal(np.sort(phase.indices),
                                  np.sort(np.concatenate([forget, lotus.retain_subset(retain, 0.3, ctx.seed + 1)])))


# Catches: a LoTUS time that leaves out part of the unlearning call (acc_u, the per-epoch acc_f passes, the
# retain sub-sampling or the updates, e.g. timing only the steps) or that includes an evaluation of the final
# model (e.g. a `finish` or an extra pass that evaluates the unlearned student inside the timed call).
def test_time_covers_subsampling_evaluations_and_updates_not_the_final_evaluation(problem, monkeypatch):
    ctx, original = problem
    epochs, sleep = 2, 1.0
    subsample = lotus.retain_subset

    def slow_subset(*args, **kwargs):
        time.sleep(sleep)
        return subsample(*args, **kwargs)

    monkeypatch.setattr(lotus, "retain_subset", slow_subset)
    rec = RecordingContext(ctx, eval_sleep=sleep)
    start = time.perf_counter()
    res = unlearn(rec, original, _cfg(epochs=epochs, stop_threshold=None), jax.random.key(0))
    wall = time.perf_counter() - start
    # acc_u once on D_u, then acc_f of the student before each epoch: nothing else is evaluated.
    assert rec.evaluations == ["val"] + ["forget"] * epochs, rec.evaluations
    assert len(res.history) == epochs
    sleeps = (len(rec.evaluations) + 1) * sleep  # the evaluations and the sub-sampling
    assert res.time_s >= sleeps, f"time_s {res.time_s:.2f}s < {sleeps:.2f}s spent evaluating and sub-sampling"
    # Practically the whole call (updates included) is timed ...
    assert res.time_s > wall - 0.5 * sleep, f"time_s {res.time_s:.2f}s of a {wall:.2f}s call"
    # ... and an evaluation of the result after the call is not.
    rec.evaluate(res.variables, "forget")
    assert res.time_s <= wall + 1e-3 < time.perf_counter() - start - 0.5 * sleep


# Catches: precomputed teacher logits paired with the wrong rows (another order than the phase's indices),
# computed from the wrong model or mode, or used while unlearning batches are augmented (then the teacher must
# see each augmented batch, so the step has to run the teacher itself).
def test_precomputed_teacher_logits_give_what_the_step_computes_itself(problem):
    ctx, original = problem
    cfg = _cfg(epochs=2, stop_threshold=None)
    phase = lotus.plan(ctx, original, cfg, jax.random.key(0)).phases(0, {"tau": 1.0})[0]
    cached = np.asarray(phase.extra["teacher_logits"])
    images = np.asarray(ctx.dataset.train.get(np.asarray(phase.indices)))
    direct = ctx.model.apply(original, ctx.prep(jnp.asarray(images)), train=False)
    np.testing.assert_allclose(cached, np.asarray(direct), rtol=1e-5, atol=1e-5)

    with_cache = unlearn(ctx, original, cfg, jax.random.key(5))
    without = unlearn(ctx, original, _cfg(epochs=2, stop_threshold=None, cache_teacher=False), jax.random.key(5))
    chex.assert_trees_all_close(jax.device_get(with_cache.variables), jax.device_get(without.variables),
                                atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose([h["loss"] for h in with_cache.history], [h["loss"] for h in without.history],
                               rtol=1e-5)

    augmenting = dataclasses.replace(ctx, unlearn_augment=True, prep=dataclasses.replace(ctx.prep, augment="crop_flip"))
    phase = lotus.plan(augmenting, original, cfg, jax.random.key(0)).phases(0, {"tau": 1.0})[0]
    assert "teacher_logits" not in phase.extra
