"""Populations: each member computes what a single run with its seed and key computes (bit for bit when
trained one by one; vmapped, bit for bit under XLA flags that round every program alike:
tests/train/test_exact_members.py), members do not influence each other, the member axis can be split over
devices, and a stopped member keeps its state."""

import dataclasses
import threading

import chex
import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from lotus_jax.data.loader import EpochLoader, PopulationLoader
from lotus_jax.data.pipeline import make_mesh
from lotus_jax.methods import supervised
from lotus_jax.train import runner
from lotus_jax.train.optim import optimizer_config
from lotus_jax.train.population import member, population_mesh, run_one_by_one, run_population
from lotus_jax.train.runner import Phase, Plan
from tests.methods.helpers import make_context

SEEDS = [5, 6, 7, 8]
CFG = mlc.ConfigDict(dict(epochs=2, batch_size=64, optimizer=optimizer_config("sgd", 0.05, 5e-4, momentum=0.9)))


@pytest.fixture(scope="module")
def ctx():
    return make_context(seed=0)


def _train_plan(indices):
    """Original-model training from a member-specific initialisation (the audit's gold population)."""
    return lambda m, c, k: supervised.plan(c, c.init_variables(jax.random.fold_in(k, 0)), indices, CFG)


def _population(ctx, seeds, keys, models=1, indices=None):
    indices = ctx.splits.retain if indices is None else indices
    return run_population(ctx, "gold", _train_plan(indices), seeds, keys, CFG, population_mesh(models))


def _max_diff(a, b):
    return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in zip(jax.tree.leaves(a),
                                                                                    jax.tree.leaves(b)))


def test_population_loader_gives_each_member_the_batches_of_its_own_epoch_loader(ctx):
    # Catches a population that shares one data order, or pairs member m with another member's seed or extras.
    mesh = make_mesh(1)
    idx = [ctx.splits.retain[:100], ctx.splits.retain[100:200], ctx.splits.forget[:100]]
    seeds = [(1, 2), (3, 4), (5, 6)]
    extra = [{"f": np.arange(100) * (k + 1)} for k in range(3)]
    with PopulationLoader(ctx.dataset.train, idx, 32, mesh, NamedSharding(mesh, P()), shuffle_seeds=seeds,
                          extra=extra) as it:
        pop = [jax.device_get(b) for b in it]
    for m in range(3):
        with EpochLoader(ctx.dataset.train, idx[m], 32, mesh, shuffle_seed=seeds[m], extra=extra[m]) as it:
            single = [jax.device_get(b) for b in it]
        assert len(single) == len(pop) == 4
        for a, b in zip(single, pop):
            for k in a:
                np.testing.assert_array_equal(a[k], b[k][m])


def test_each_member_computes_the_single_run_with_its_seed_and_key(ctx):
    # Catches members sharing an initialisation, a data order or keys, or a member paired with another's seed:
    # any of those moves parameters by orders of magnitude more than float rounding (the vmapped kernels may
    # sum in another order, so equality is to float32 rounding, not bit for bit).
    keys = jax.random.split(jax.random.key(9), len(SEEDS))
    pop = _population(ctx, SEEDS, keys)
    for m in (0, 3):
        c = dataclasses.replace(ctx, seed=SEEDS[m])
        single = runner.run(c, "gold", lambda c=c, m=m: _train_plan(c.splits.retain)(m, c, keys[m]), CFG, keys[m])
        assert _max_diff(single.variables, member(pop.variables, m)) < 1e-5
        np.testing.assert_allclose([h["loss"] for h in pop.histories[m]], [h["loss"] for h in single.history],
                                   rtol=1e-5)
    assert _max_diff(member(pop.variables, 0), member(pop.variables, 1)) > 1e-2  # members really differ


def test_members_do_not_influence_each_other(ctx):
    # Catches statistics shared across the member axis (BatchNorm over all members, a loss averaged over
    # members): member 0 must come out bit-identical whatever the other members are.
    keys = jax.random.split(jax.random.key(9), 4)
    other = jax.random.split(jax.random.key(10), 4)
    a = _population(ctx, SEEDS, keys)
    b = _population(ctx, [SEEDS[0], 11, 12, 13], jnp.concatenate([keys[:1], other[1:]]))
    chex.assert_trees_all_equal(member(a.variables, 0), member(b.variables, 0))


def test_member_axis_split_over_devices_gives_the_same_models(ctx):
    # 8 fake CPU devices (tests/conftest.py): the member axis laid over 4 of them.
    keys = jax.random.split(jax.random.key(9), 4)
    one = _population(ctx, SEEDS, keys, models=1)
    four = _population(ctx, SEEDS, keys, models=4)
    leaf = jax.tree.leaves(four.variables)[0]
    assert leaf.sharding.spec == P("models") and len(leaf.sharding.device_set) == 4
    assert _max_diff(one.variables, four.variables) < 1e-5
    with pytest.raises(Exception, match="multiple"):
        _population(ctx, SEEDS[:3], keys[:3], models=4)


@pytest.mark.parametrize("models", [1, 2])
def test_a_stopped_member_keeps_its_state_while_the_others_go_on(ctx, models):
    # Catches a population that keeps updating stopped members (LoTUS's per-member stop rule) or stops all;
    # with the member axis over 2 devices too (the put-back then writes rows of a sharded state).
    def plans(cfg):
        def make(m, c, k):
            base = supervised.plan(c, c.init_variables(jax.random.fold_in(k, 0)), c.splits.retain, cfg)
            stop_after = {0: 1}.get(m)  # member 0 stops before epoch 2; the others run both epochs
            return dataclasses.replace(
                base, before_epoch=lambda state, epoch: {"stopped": stop_after is not None and epoch >= stop_after})
        return make

    keys = jax.random.split(jax.random.key(9), 2)
    pop = run_population(ctx, "gold", plans(CFG), SEEDS[:2], keys, CFG, population_mesh(models))
    one = mlc.ConfigDict({**CFG.to_dict(), "epochs": 1})
    one_epoch = run_population(ctx, "gold", plans(one), SEEDS[:2], keys, one, population_mesh(models))
    chex.assert_trees_all_equal(member(pop.variables, 0), member(one_epoch.variables, 0))
    assert _max_diff(member(pop.variables, 1), member(one_epoch.variables, 1)) > 1e-3
    # The stopped member is put back after each step: the running member's numbers are those of a population
    # where nobody stops, bit for bit (a put-back into the wrong rows would change them).
    chex.assert_trees_all_equal(member(pop.variables, 1),
                                member(_population(ctx, SEEDS[:2], keys, models=models).variables, 1))
    assert [h["stopped"] for h in pop.histories[0]] == [False, True]
    assert len(pop.histories[1]) == 2 and not pop.histories[1][-1]["stopped"]


def test_a_stopped_member_stays_stopped(ctx, tmp_path):
    # Member 0's hook says "stopped" before epoch 2 only. Its single run would end there, so the population must
    # neither ask its hook again nor train it later, also after a resume (the stop is read back from the
    # history). Catches a member resumed when its hook changes its mind.
    calls = []

    def make(m, c, k):
        base = supervised.plan(c, c.init_variables(jax.random.fold_in(k, 0)), c.splits.retain, four)

        def hook(state, epoch):
            calls.append((m, epoch))
            return {"stopped": m == 0 and epoch == 1}

        return dataclasses.replace(base, before_epoch=hook)

    four = mlc.ConfigDict({**CFG.to_dict(), "epochs": 4})
    one = mlc.ConfigDict({**CFG.to_dict(), "epochs": 1})
    keys = jax.random.split(jax.random.key(9), 2)
    pop = run_population(ctx, "gold", make, SEEDS[:2], keys, four, population_mesh(1))
    one_epoch = run_population(ctx, "gold", make, SEEDS[:2], keys, one, population_mesh(1))
    chex.assert_trees_all_equal(member(pop.variables, 0), member(one_epoch.variables, 0))
    assert [h["stopped"] for h in pop.histories[0]] == [False, True, True, True]
    assert (0, 2) not in calls and (1, 2) in calls

    # Interrupted in epoch 3 and resumed: epoch 4 must not train member 0 either.
    c = dataclasses.replace(ctx, progress_dir=tmp_path, stop=threading.Event())

    def interrupting(m, cc, k):
        plan = make(m, cc, k)

        def phases(epoch, info, base=plan.phases):
            if epoch == 2:
                c.stop.set()
            return base(epoch, info)

        return dataclasses.replace(plan, phases=phases)

    with pytest.raises(runner.Interrupted):
        run_population(c, "gold", interrupting, SEEDS[:2], keys, four, population_mesh(1))
    c.stop.clear()
    resumed = run_population(c, "gold", make, SEEDS[:2], keys, four, population_mesh(1))
    chex.assert_trees_all_equal(resumed.variables, pop.variables)


def test_a_population_resumes_after_a_stop_request(ctx, tmp_path):
    # Catches a population checkpoint that loses the member axis or the position: the resumed run must end
    # with the same models as an uninterrupted one.
    keys = jax.random.split(jax.random.key(9), 2)
    ref = _population(ctx, SEEDS[:2], keys)
    c = dataclasses.replace(ctx, progress_dir=tmp_path, stop=threading.Event())
    calls = []

    def make(m, cc, k):
        plan = _train_plan(cc.splits.retain)(m, cc, k)

        def phases(epoch, info, base=plan.phases):
            if epoch == 1 and m == 0 and not calls:
                calls.append(1)
                c.stop.set()  # the stop request arrives during epoch 2; the runner checkpoints after a step
            return base(epoch, info)

        return dataclasses.replace(plan, phases=phases)

    with pytest.raises(runner.Interrupted):
        run_population(c, "gold", make, SEEDS[:2], keys, CFG, population_mesh(1))
    c.stop.clear()
    resumed = run_population(c, "gold", _train_plan(c.splits.retain), SEEDS[:2], keys, CFG, population_mesh(1))
    chex.assert_trees_all_equal(ref.variables, resumed.variables)


def test_phases_of_a_population_must_run_the_same_step(ctx):
    def make(m, c, k):
        plan = supervised.plan(c, c.init_variables(k), c.splits.retain, CFG)
        if m == 1:
            step = lambda state, batch, key: (state, {"loss": jnp.float32(0)})  # noqa: E731
            return dataclasses.replace(plan, phases=lambda e, i: [Phase("train", step, c.splits.retain, keyed=True)])
        return plan

    with pytest.raises(ValueError, match="different steps"):
        run_population(ctx, "gold", make, SEEDS[:2], jax.random.split(jax.random.key(0), 2), CFG,
                       population_mesh(1))


def test_population_of_plans_without_an_optimizer_runs_their_finish(ctx):
    # One-shot plans (SSD): epochs=0, the work is in `finish`, applied per member.
    def make(m, c, k):
        v = c.init_variables(k)
        return Plan(state=v, batch_size=64, finish=lambda s, m=m: jax.tree.map(lambda x: x * 0 + m, s))

    pop = run_population(ctx, "ssd", make, SEEDS[:2], jax.random.split(jax.random.key(0), 2), CFG,
                         population_mesh(1))
    assert float(jax.tree.leaves(member(pop.variables, 1))[0].max()) == 1.0
    assert float(jax.tree.leaves(member(pop.variables, 0))[0].max()) == 0.0


def test_one_by_one_members_are_bit_for_bit_their_single_runs_and_compile_once(ctx):
    # Catches a member trained with another member's seed, key or stage name (a different data order or
    # init), a population whose members do not end up at their index in the stacked tree, and one that
    # compiles the step again for every member (each member's plan makes its own optimizer object).
    keys = jax.random.split(jax.random.key(9), 3)
    sharding = NamedSharding(population_mesh(1), P("models"))
    fresh = dataclasses.replace(ctx, compiled={})  # nothing compiled by the tests before
    pop = run_one_by_one(fresh, "gold", _train_plan(ctx.splits.retain), SEEDS[:3], keys, CFG, sharding)
    assert [f._cache_size() for f in fresh.compiled.values()] == [1]  # one jitted step, traced and compiled once
    for m in (0, 2):
        c = dataclasses.replace(ctx, seed=SEEDS[m])
        single = runner.run(c, "gold", lambda c=c, m=m: _train_plan(c.splits.retain)(m, c, keys[m]), CFG, keys[m])
        chex.assert_trees_all_equal(member(pop.variables, m), single.variables)
        assert [h["loss"] for h in pop.histories[m]] == [h["loss"] for h in single.history]
    assert jax.tree.leaves(pop.variables)[0].sharding == sharding


def test_one_by_one_resumes_after_a_stop_request_in_a_later_member(ctx, tmp_path):
    # Catches members that restart from scratch (or from another member's checkpoint) after a stop: the
    # finished first member and the interrupted second must end as in an uninterrupted population.
    keys = jax.random.split(jax.random.key(9), 2)
    sharding = NamedSharding(population_mesh(1), P("models"))
    ref = run_one_by_one(ctx, "gold", _train_plan(ctx.splits.retain), SEEDS[:2], keys, CFG, sharding)
    c = dataclasses.replace(ctx, progress_dir=tmp_path, stop=threading.Event())

    def make(m, cc, k):
        plan = _train_plan(cc.splits.retain)(m, cc, k)

        def phases(epoch, info, base=plan.phases):
            if epoch == 1 and m == 1:
                c.stop.set()  # during member 2's second epoch
            return base(epoch, info)

        return dataclasses.replace(plan, phases=phases)

    with pytest.raises(runner.Interrupted):
        run_one_by_one(c, "gold", make, SEEDS[:2], keys, CFG, sharding)
    assert sorted(p.name for p in (tmp_path / "gold.members").iterdir()) == ["0", "1"]
    c.stop.clear()
    resumed = run_one_by_one(c, "gold", _train_plan(c.splits.retain), SEEDS[:2], keys, CFG, sharding)
    chex.assert_trees_all_equal(ref.variables, resumed.variables)
