"""The audit stage: populations of retrained (gold) models and of each method's unlearned models, trained as
vmapped ensembles (on one CPU device, by default, one member after another), then per forget example the
NeurIPS 2023 epsilon / forget score and U-LiRA (`metrics.audit`), with a floor (the original model(s) scored
as if unlearned) and a ceiling (two halves of the gold population scored against each other). Populations and
their statistics are checkpointed in `<workdir>/audit/`, so a killed audit resumes. docs/definitions.md §6
gives the definitions.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from etils import epath
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from lotus_jax import checkpoint, config, files
from lotus_jax.errors import ConfigError, failure_reason
from lotus_jax.evaluate import SPLITS, SplitStats, model_metrics, statistics_from_outputs
from lotus_jax.methods import REGISTRY as METHODS
from lotus_jax.methods import supervised
from lotus_jax.metrics.audit import audit_summary, logit_confidence
from lotus_jax.train.context import Context
from lotus_jax.train.population import PopulationResult, member, population_mesh, run_one_by_one, run_population
from lotus_jax.train.runner import Interrupted, Plan, settings_json, stage_salt
from lotus_jax.train.state import Variables, all_finite

ORIGINALS = ("one", "per_model")
POPULATION_METRICS = ("acc_forget", "acc_retain", "acc_test", "mia", "jsd", "rf_jsd")


def use_vmap(setting: bool | None, backend: str, member_devices: int = 1) -> bool:
    """Whether populations train as one vmapped program: `audit.vmap` when set; unset, on every backend but
    the CPU, or when the member axis is split over several devices (`audit.mesh_models`). On one CPU device,
    one member after another is faster (XLA's CPU backend gains little from batching models and compiles
    the batched programs longer) and gives each member bit for bit its single run."""
    if setting is not None:
        return bool(setting)
    return backend != "cpu" or member_devices > 1


def section_settings(cfg: Any, methods: list[str]) -> dict[str, Any]:
    """What the audit section's numbers depend on beyond the run-defining config: each audited method's
    settings with whether its batches are augmented, and the evaluation's JSD form and RF-JSD split."""
    return {"methods": {name: config.method_settings(cfg, name) for name in methods},
            "eval": {"jsd_form": cfg.eval.jsd_form, "rf_jsd_unseen": cfg.eval.rf_jsd_unseen}}


def check_split(audit_cfg: Any) -> None:
    """Refuses, before any work, a population that `audit.mesh_models` (-1: all devices) cannot split evenly."""
    devices = population_mesh(int(audit_cfg.mesh_models)).shape["models"]
    if int(audit_cfg.models) % devices:
        raise ConfigError(f"audit.models={audit_cfg.models} cannot be split over the {devices} devices of "
                          f"audit.mesh_models={audit_cfg.mesh_models}; use a multiple of {devices}")


def member_seeds(seed: int, what: str, n: int) -> list[int]:
    """N distinct member seeds for population `what`, a pure function of the run seed."""
    state = np.random.SeedSequence([seed, stage_salt(f"audit/{what}")]).generate_state(n, np.uint32)
    return [int(s) for s in state]


@dataclasses.dataclass
class PopulationStats:
    """Per member: the logit-scaled confidence on every forget example and the split statistics."""

    confidence: np.ndarray  # (N, n_forget)
    stats: list[dict[str, SplitStats]]


@dataclasses.dataclass(frozen=True)
class PopulationEvaluator:
    """The evaluation pass and the forward pass `jax.vmap`ped over the member axis, jitted once per run."""

    statistics: dict[bool, Callable]  # keep_probs -> (stacked variables, batch) -> stacked batch statistics
    logits: Callable  # (stacked variables, images) -> (N, batch, classes)

    @classmethod
    def of(cls, ctx: Context) -> PopulationEvaluator:
        stats = {keep: jax.jit(jax.vmap(lambda v, b, k=keep: ctx.eval_fn(v, b, k), in_axes=(0, None)))
                 for keep in (False, True)}
        logits = jax.jit(jax.vmap(lambda v, x: ctx.model.apply(v, ctx.prep(x), train=False), in_axes=(0, None)))
        return cls(stats, logits)


def population_statistics(ctx: Context, variables: Variables, sharding: NamedSharding,
                          evaluator: PopulationEvaluator | None = None) -> PopulationStats:
    """One pass per split with every member at once (the evaluation `jax.vmap`ped over the member axis)."""
    evaluator = evaluator or PopulationEvaluator.of(ctx)
    replicated = NamedSharding(sharding.mesh, P())
    variables = jax.device_put(variables, sharding)
    n = jax.tree.leaves(variables)[0].shape[0]
    out: list[dict[str, SplitStats]] = [{} for _ in range(n)]
    for split in SPLITS:
        keep = split == "forget"
        fn = evaluator.statistics[keep]
        source, indices = ctx.split_source(split)
        with ctx.batches(indices, ctx.eval_batch_size, source=source) as it:
            host = [jax.device_get((fn(variables, jax.device_put(b, replicated)), b["mask"], b["label"])) for b in it]
        for m in range(n):
            member_outputs = ((jax.tree.map(lambda x: x[m], o), mask, lab) for o, mask, lab in host)
            out[m][split] = statistics_from_outputs(member_outputs, ctx.num_classes, keep)
    logits_fn = evaluator.logits
    source, indices = ctx.split_source("forget")
    logits, labels = [], []
    with ctx.batches(indices, ctx.eval_batch_size, source=source) as it:
        for b in it:
            z = np.asarray(jax.device_get(logits_fn(variables, jax.device_put(b["image"], replicated))))
            mask = np.asarray(b["mask"], bool)
            logits.append(z[:, mask])
            labels.append(np.asarray(b["label"])[mask])
    lab = np.concatenate(labels)
    conf = logit_confidence(np.concatenate(logits, axis=1), np.broadcast_to(lab, (n, len(lab))))
    return PopulationStats(conf, out)


class Auditor:
    """Builds (or reloads) each population and its statistics in `workdir/audit/`."""

    def __init__(self, ctx: Context, cfg: Any, workdir: epath.Path, like: Variables, key: jax.Array) -> None:
        self.ctx, self.cfg, self.like, self.key = ctx, cfg, like, key
        self.dir = workdir / "audit"
        self.n = int(cfg.audit.models)
        self.mesh = population_mesh(int(cfg.audit.mesh_models))
        self.vmap = use_vmap(cfg.audit.get("vmap"), jax.default_backend(), self.mesh.shape["models"])
        self.sharding = NamedSharding(self.mesh, P("models"))
        self.records: dict[str, dict] = {}
        self.evaluator = PopulationEvaluator.of(ctx)

    def population(self, name: str, make_plan: Callable[[int, Context, jax.Array], Plan], settings: Any,
                   augment: bool = False) -> Variables:
        """Population `name`: reloaded when its checkpoint was made with these settings, else trained."""
        path, record_path = self.dir / name, self.dir / f"{name}.json"
        wanted = {"settings": settings_json(settings), "augment": bool(augment), "models": self.n,
                  "seed": self.ctx.seed}
        if checkpoint.exists(path) and record_path.exists():
            record = json.loads(record_path.read_text())
            if {k: record.get(k) for k in wanted} == wanted:
                self.records[name] = record
                self.ctx.log(f"[audit/{name}] population found in {path}: skipping training")
                like = jax.tree.map(lambda x: jax.ShapeDtypeStruct((self.n, *x.shape), x.dtype), self.like)
                return jax.device_put(checkpoint.restore(path, like, self.ctx.mesh), self.sharding)
        # Statistics of an earlier population under this name describe other models: drop them before training.
        (self.dir / f"{name}.npz").unlink(missing_ok=True)
        seeds = member_seeds(self.ctx.seed, name, self.n)
        keys = jax.random.split(jax.random.fold_in(self.key, stage_salt(f"audit/{name}")), self.n)
        ctx = dataclasses.replace(self.ctx, progress_dir=self.dir / "progress")
        if self.vmap:
            result: PopulationResult = run_population(ctx, name, make_plan, seeds, keys, settings, self.mesh, augment)
        else:
            result = run_one_by_one(ctx, name, make_plan, seeds, keys, settings, self.sharding, augment)
        checkpoint.save(path, result.variables)
        for progress in (name, f"{name}.members"):
            (self.dir / "progress" / progress).rmtree(missing_ok=True)
        record = {**wanted, "time_s": result.time_s, "time_per_model_s": result.time_s / self.n,
                  "histories": result.histories}
        files.write_json(record_path, record)
        self.records[name] = record
        self.ctx.log(f"[audit/{name}] {self.n} models in {result.time_s:.1f}s ({result.time_s / self.n:.2f}s each)")
        return result.variables

    def statistics(self, name: str, variables: Variables) -> PopulationStats:
        """The population's statistics, cached in `audit/<name>.npz` next to its checkpoint."""
        path = self.dir / f"{name}.npz"
        if path.exists() and (self.dir / f"{name}.json").exists():
            with path.open("rb") as f:
                data = dict(np.load(f))
            if data["confidence"].shape[0] == self.n:
                return PopulationStats(data["confidence"], [
                    {s: SplitStats(**{f: data[f"{m}.{s}.{f}"] for f in _FIELDS if f"{m}.{s}.{f}" in data})
                     for s in SPLITS} for m in range(self.n)])
        stats = population_statistics(self.ctx, variables, self.sharding, self.evaluator)
        arrays = {"confidence": stats.confidence}
        for m, per_split in enumerate(stats.stats):
            for s, st in per_split.items():
                arrays.update({f"{m}.{s}.{f}": getattr(st, f) for f in _FIELDS if getattr(st, f) is not None})
        files.write_npz(path, **arrays)
        return stats


_FIELDS = ("correct", "entropy", "labels", "prob_sums", "counts", "probs")


def _population_metrics(stats: PopulationStats, originals: list[dict[str, SplitStats]],
                        gold: PopulationStats, cfg: Any) -> dict[str, float]:
    """Mean and standard deviation across members of each member's metrics (JSD against gold member m)."""
    per_member = [model_metrics(st, originals[m], gold.stats[m], form=cfg.eval.jsd_form,
                                rf_unseen=cfg.eval.rf_jsd_unseen, seed=cfg.seed) for m, st in enumerate(stats.stats)]
    out: dict[str, float] = {}
    for k in POPULATION_METRICS:
        vals = np.array([m[k] for m in per_member if k in m], np.float64)
        if len(vals):
            out[k], out[f"{k}_std"] = float(vals.mean()), float(vals.std())
    return out


def _accuracies(stats: PopulationStats, split: str) -> np.ndarray:
    return np.array([st[split].accuracy for st in stats.stats])


def _score(u: PopulationStats, r: PopulationStats) -> dict[str, dict]:
    return audit_summary(u.confidence, r.confidence, _accuracies(u, "retain"), _accuracies(r, "retain"),
                         _accuracies(u, "test"), _accuracies(r, "test"))


def _half(stats: PopulationStats, part: slice) -> PopulationStats:
    return PopulationStats(stats.confidence[part], stats.stats[part])


def run_audit(ctx: Context, cfg: Any, workdir: epath.Path, original: Variables, key: jax.Array,
              methods: list[str]) -> dict[str, Any]:
    """Trains the populations, scores every method against the gold population, returns the `audit` section
    of metrics.json and writes the per-example arrays to `audit/scores.npz`."""
    aud = Auditor(ctx, cfg, workdir, original, key)
    n, per_model = aud.n, cfg.audit.originals == "per_model"
    how = "one vmapped program" if aud.vmap else "one member after another"
    ctx.log(f"[audit] {n} models per population ({how}), originals: {cfg.audit.originals}, "
            f"methods: {', '.join(methods)}")
    retain = ctx.splits.retain
    everything = np.sort(np.concatenate([ctx.splits.forget, retain]))

    def trained(indices: np.ndarray, tcfg: Any) -> Callable[[int, Context, jax.Array], Plan]:
        return lambda m, c, k: supervised.plan(c, c.init_variables(jax.random.fold_in(k, 0)), indices, tcfg)

    gold_vars = aud.population("gold", trained(retain, cfg.retrain), cfg.retrain)
    gold = aud.statistics("gold", gold_vars)
    if per_model:
        origin = aud.population("original", trained(everything, cfg.train), cfg.train)
        origins = aud.statistics("original", origin)
        start = lambda m: member(origin, m)  # noqa: E731
    else:
        one = population_statistics(ctx, jax.tree.map(lambda x: x[None], original), NamedSharding(
            population_mesh(1), P("models")), aud.evaluator)
        # n copies of the one original: scored as U, a point mass (the floor)
        origins = PopulationStats(np.repeat(one.confidence, n, axis=0), one.stats * n)
        start = lambda m: original  # noqa: E731
    scores: dict[str, Any] = {}
    arrays: dict[str, np.ndarray] = {"gold.confidence": gold.confidence}
    for name in methods:
        module = METHODS.get(name)
        mcfg = cfg[name]
        try:
            pop = aud.population(name, lambda m, c, k, mod=module, mc=mcfg: mod.plan(c, start(m), mc, k),
                                 {**settings_json(mcfg), "originals": cfg.audit.originals},
                                 augment=ctx.unlearn_augment)
            if not bool(all_finite(pop)):
                raise FloatingPointError("non-finite parameters after unlearning (diverged)")
        except (ConfigError, Interrupted):
            raise
        except Exception as e:  # a failing method (NaN loss, say) must not take the other populations down
            scores[name] = {"failed": failure_reason(e)}
            ctx.log(f"[audit/{name}] failed: {scores[name]['failed']}")
            continue
        stats = aud.statistics(name, pop)
        summary = _score(stats, gold)
        scores[name] = {**summary["scalars"], "time_per_model_s": aud.records[name]["time_per_model_s"],
                        "population": _population_metrics(stats, origins.stats, gold, cfg)}
        arrays.update({f"{name}.{k}": v for k, v in summary["arrays"].items()})
        arrays[f"{name}.confidence"] = stats.confidence
        ctx.log(f"[audit/{name}] forget score {scores[name]['forget_score']:.4f}  final score "
                f"{scores[name]['final_score']:.4f}  U-LiRA AUC {scores[name]['ulira_auc']:.4f}")
    floor = _score(origins, gold)
    ceiling = _score(_half(gold, slice(0, n // 2)), _half(gold, slice(n // 2, None)))
    for label, summary in (("floor", floor), ("ceiling", ceiling)):
        arrays.update({f"{label}.{k}": v for k, v in summary["arrays"].items()})
    files.write_npz(workdir / "audit" / "scores.npz", **arrays)
    return {"models": n, "originals": cfg.audit.originals, "methods": scores,
            "settings": section_settings(cfg, methods),
            "floor": {**floor["scalars"], "population": _population_metrics(origins, origins.stats, gold, cfg)},
            "ceiling": {**ceiling["scalars"], "population": _population_metrics(gold, origins.stats, gold, cfg)},
            "gold": {"time_per_model_s": aud.records["gold"]["time_per_model_s"]}}
