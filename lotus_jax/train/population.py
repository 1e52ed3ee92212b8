"""Populations of models trained as one program: N members of one architecture, each with its own seed (data
order, numpy-seeded choices) and PRNG key, their states stacked on a leading axis and every step `jax.vmap`ped
over it. The member axis can be laid over a mesh axis (`models`), so many devices train many models at once.
`run_one_by_one` trains the same members one after another with the single-run runner instead.

A population runs any method unchanged: the method's `plan` is built once per member (with the member's seed
and key), and the plans are stacked. Member m then reads the batches a single run with its seed reads and gets
the keys a single run with its key gets, so it computes what that run computes: bit for bit under XLA flags
that make float32 rounding independent of the program, else up to the last bits (docs/definitions.md). A
member whose epoch hook says `stopped` (LoTUS's stop rule) keeps its state while the others go on.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from lotus_jax.data.loader import PopulationLoader
from lotus_jax.data.pipeline import check_batch_size
from lotus_jax.errors import ConfigError
from lotus_jax.train.context import Context
from lotus_jax.train.resume import StageCheckpoints
from lotus_jax.train.runner import Phase, Plan, _Stage, run, settings_json, step_id
from lotus_jax.train.state import Variables, variables_of


def population_mesh(models: int, devices: Sequence | None = None) -> Mesh:
    """A ('models',) mesh over `models` devices (-1: all); the member axis of states and batches is split over it."""
    devices = list(jax.devices() if devices is None else devices)
    models = len(devices) if models == -1 else models
    if models < 1 or models > len(devices):
        raise ConfigError(f"audit.mesh_models={models} must lie in [1, {len(devices)}] (the devices available)")
    return Mesh(np.asarray(devices[:models]), ("models",))


def stack(trees: Sequence[Any]) -> Any:
    """Trees of equal shape stacked on a new leading axis, in the structure of the first (train states of
    different members hold equal but distinct optimizer functions)."""
    leaves = [jax.tree.leaves(t) for t in trees]
    stacked = [jnp.stack([jnp.asarray(x) for x in xs]) for xs in zip(*leaves)]
    return jax.tree.unflatten(jax.tree.structure(trees[0]), stacked)


def member(tree: Any, m: int) -> Any:
    """Member `m` of a stacked tree."""
    return jax.tree.map(lambda x: x[m], tree)


@dataclasses.dataclass
class PopulationResult:
    """Stacked final variables (leading member axis), the wall time of the whole population, per-member
    histories and extras."""

    variables: Variables
    time_s: float
    histories: list[list[dict]]
    extras: list[dict]


def _same(values: Sequence[Any]) -> bool:
    """Whether every member passes the very same object (e.g. one shared teacher), leaf by leaf."""
    leaves = [jax.tree.leaves(v) for v in values]
    return all(len(lv) == len(leaves[0]) and all(a is b for a, b in zip(lv, leaves[0])) for lv in leaves[1:])


def _population_step(step: Callable, shared: tuple[bool, ...], keyed: bool) -> Callable:
    """`step` vmapped over the members of a stacked state; arguments flagged in `shared` are the same for all."""
    axes = tuple(None if s else 0 for s in shared) + ((0,) if keyed else ())
    return jax.vmap(step, in_axes=(0, 0, *axes))


def _take(state: Any, rows: jax.Array) -> Any:
    """Members `rows` of a stacked state (a copy)."""
    return jax.tree.map(lambda x: x[rows], state)


def _put_back(state: Any, kept: Any, rows: jax.Array) -> Any:
    """`state` with members `rows` replaced by `kept` (their states when they stopped)."""
    return jax.tree.map(lambda x, k: x.at[rows].set(k), state, kept)


class _PopulationStage(_Stage):
    """The runner's loop over stacked states: member plans, per-member hooks, loaders and keys."""

    def __init__(self, ctx: Context, name: str, plans: list[Plan], seeds: list[int], keys: jax.Array,
                 ckpts: StageCheckpoints, started: float, augment: bool, sharding: NamedSharding) -> None:
        self.plans, self.seeds, self.sharding = plans, seeds, sharding
        self.replicated = NamedSharding(sharding.mesh, P())  # what all members share (a teacher)
        self.members = len(plans)
        self.stopped: tuple[jax.Array, Any] | None = None  # (rows, their states) of stopped members this epoch
        self.done: dict[int, dict] = {}  # member -> the epoch info with which it stopped (its single run ended)
        population = dataclasses.replace(plans[0], state=jax.device_put(stack([p.state for p in plans]), sharding))
        super().__init__(ctx, name, population, ckpts, jax.device_put(keys, sharding), started, augment, {})
        for record in self.history:  # a resumed stage: members that stopped before stay stopped
            for m, info in enumerate(record.get("members", [])):
                if info.get("stopped", False):
                    self.done.setdefault(m, info)

    def _epoch_info(self) -> dict:
        infos = []
        for m, p in enumerate(self.plans):
            if m in self.done:  # a stopped member stays stopped, as its single run has ended: no more hooks
                infos.append(self.done[m])
                continue
            info = dict(p.before_epoch(member(self.state, m), self.epoch)) if p.before_epoch else {}
            if info.get("stopped", False):
                self.done[m] = info
            infos.append(info)
        return {"stopped": all(i.get("stopped", False) for i in infos), "members": infos}

    def _epoch_phases(self) -> list[Phase]:
        infos = self.info["members"]
        active = [not i.get("stopped", False) for i in infos]
        running = active.index(True)
        # A stopped member runs the phases of a running one; after every step its state is put back (in a
        # program of its own: a selection fused into the step would change how XLA rounds the others' updates).
        per_member = [p.phases(self.epoch, infos[m] if active[m] else infos[running]) for m, p in enumerate(self.plans)]
        rows = np.flatnonzero(~np.asarray(active))
        self.stopped = None
        if len(rows):
            take = self._jitted(("population-take",), lambda: jax.jit(_take))
            self.stopped = (jnp.asarray(rows), take(self.state, jnp.asarray(rows)))
        phases = []
        for parts in zip(*per_member):
            first = parts[0]
            if len({step_id(p.step) for p in parts}) != 1:
                raise ValueError(f"{self.name}: members run different steps in phase {first.name!r}")
            shared = tuple(_same([p.args[j] for p in parts]) for j in range(len(first.args)))
            args = tuple(jax.device_put(first.args[j], self.replicated) if s
                         else jax.device_put(stack([p.args[j] for p in parts]), self.sharding)
                         for j, s in enumerate(shared))
            key = (step_id(first.step), shared, first.keyed)
            step = self._jitted(key, functools.partial(_population_step, first.step, shared, first.keyed))
            if isinstance(first.indices, dict):
                indices = {k: [p.indices[k] for p in parts] for k in first.indices}
            else:
                indices = [p.indices for p in parts]
            extra = None if first.extra is None else [p.extra for p in parts]
            phases.append(Phase(first.name, step, indices, args=args, extra=extra, shuffle=first.shuffle,
                                keyed=first.keyed))
        return phases

    def _after_step(self, state: Any) -> Any:
        if self.stopped is None:
            return state
        put_back = self._jitted(("population-put-back",), lambda: jax.jit(_put_back, donate_argnums=0))
        return put_back(state, self.stopped[1], self.stopped[0])

    def _open(self, indices: Any, seed: tuple[int, ...] | None, extra: Any, start: int) -> PopulationLoader:
        seeds = None if seed is None else [(s, *seed) for s in self.seeds]
        return PopulationLoader(self.ctx.dataset.train, indices, self.plan.batch_size, self.ctx.mesh, self.sharding,
                                shuffle_seeds=seeds, extra=extra, start_batch=start,
                                skip_corrupt=self.ctx.skip_corrupt)

    def _fold(self, key: jax.Array, data: int) -> jax.Array:
        return jax.vmap(jax.random.fold_in, in_axes=(0, None))(key, data)

    def _augment(self, images: jax.Array, key: jax.Array) -> jax.Array:
        return jax.vmap(self.augment)(images, key)

    def _count(self, indices: Any) -> int:
        return len(indices[0])

    def finish(self) -> Variables:
        if not any(p.finish for p in self.plans):
            return variables_of(self.state)
        states = [member(self.state, m) for m in range(self.members)]
        return jax.device_put(stack([p.finish(s) if p.finish else variables_of(s) for p, s in zip(self.plans, states)]),
                              self.sharding)


def run_population(ctx: Context, name: str, make_plan: Callable[[int, Context, jax.Array], Plan], seeds: Sequence[int],
                   keys: jax.Array, settings: Any, mesh: Mesh, augment: bool = False) -> PopulationResult:
    """Trains `len(seeds)` members of stage `name` at once: member m's plan is `make_plan(m, ctx with seed
    seeds[m], keys[m])`; their states are stacked and laid over `mesh`'s 'models' axis. Resumable like `run`."""
    started = time.perf_counter()
    seeds = [int(s) for s in seeds]
    n = len(seeds)
    models = mesh.shape["models"]
    if n % models:
        raise ConfigError(f"a population of {n} models cannot be split over {models} devices; use a multiple")
    plans = [make_plan(m, dataclasses.replace(ctx, seed=s), keys[m]) for m, s in enumerate(seeds)]
    check_batch_size(plans[0].batch_size, ctx.mesh)
    directory = None if ctx.progress_dir is None else ctx.progress_dir / name
    ckpts = StageCheckpoints(name, directory, settings_json(settings), ctx.log)
    try:
        stage = _PopulationStage(ctx, name, plans, seeds, keys, ckpts, started, augment,
                                 NamedSharding(mesh, P("models")))
        if plans[0].summary and stage.epoch == 0:
            ctx.log(f"[{name}] {n} models; member 0: {plans[0].summary}")
        stage.run()
        variables = jax.block_until_ready(stage.finish())
        histories = [[{**{k: (v[m] if isinstance(v, list) and len(v) == n else v) for k, v in h.items()
                          if k != "members"}, **h.get("members", [{}] * n)[m]} for h in stage.history]
                     for m in range(n)]
        return PopulationResult(variables, stage.elapsed(), histories, [p.extra for p in plans])
    finally:
        ckpts.close()


def run_one_by_one(ctx: Context, name: str, make_plan: Callable[[int, Context, jax.Array], Plan],
                   seeds: Sequence[int], keys: jax.Array, settings: Any, sharding: NamedSharding,
                   augment: bool = False) -> PopulationResult:
    """The population of `run_population` trained member after member by `runner.run`: member m is bit for bit
    the single run with seed `seeds[m]` and key `keys[m]`, one compilation (`ctx.compiled`) serves every
    member, and each member resumes from its own checkpoints (`<progress>/<name>.members/<m>/`). Returns the
    stacked variables laid over `sharding` and the summed training time."""
    seeds = [int(s) for s in seeds]
    variables, histories, extras, seconds = [], [], [], 0.0
    structures: list = []

    def plan_of(m: int, c: Context) -> Plan:
        # Each member's plan builds its own optimizer, equal to member 0's but another object: a static part of
        # the state's tree, which would make jit compile the step again. Member 0's tree structure is used.
        plan = make_plan(m, c, keys[m])
        if not structures:
            structures.append(jax.tree.structure(plan.state))
            return plan
        return dataclasses.replace(plan, state=jax.tree.unflatten(structures[0], jax.tree.leaves(plan.state)))

    for m, seed in enumerate(seeds):
        tag = f"(member {m + 1}/{len(seeds)}) "
        c = dataclasses.replace(ctx, seed=seed, log=lambda s, tag=tag: ctx.log(tag + s),
                                progress_dir=None if ctx.progress_dir is None
                                else ctx.progress_dir / f"{name}.members" / str(m))
        result = run(c, name, lambda c=c, m=m: plan_of(m, c), settings, keys[m], augment)
        variables.append(result.variables)
        histories.append(result.history)
        extras.append(result.extra)
        seconds += result.time_s
    return PopulationResult(jax.device_put(stack(variables), sharding), seconds, histories, extras)
