"""Evaluation of trained/unlearned models: one batched pass per split, then the docs/definitions.md §5 metrics.

`evaluate_indices` runs the model over a split; `summarize` turns the statistics of every model into the
numbers of `metrics.json` (pure: no model, only saved statistics, so reports can be regenerated from disk).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lotus_jax import files, sharding
from lotus_jax.data.transforms import Preprocess
from lotus_jax.metrics.stats import batch_statistics
from lotus_jax.metrics.gap import avg_gap
from lotus_jax.metrics.jsd import jsd, rf_jsd
from lotus_jax.metrics.mia import mia

if TYPE_CHECKING:
    from lotus_jax.train.context import Context

Variables = dict[str, Any]
SPLITS = ("forget", "retain", "val", "test")
JSD_FORMS = ("textbook", "compat")


@dataclasses.dataclass
class SplitStats:
    """Per-example (correct, entropy, labels, optional probs) and per-class (prob_sums, counts) statistics."""

    correct: np.ndarray
    entropy: np.ndarray
    labels: np.ndarray
    prob_sums: np.ndarray
    counts: np.ndarray
    probs: np.ndarray | None = None

    @property
    def accuracy(self) -> float:
        return float(np.mean(self.correct)) if len(self.correct) else float("nan")


def make_eval_fn(model: nn.Module, prep: Preprocess, num_classes: int) -> Callable:
    """Jitted (variables, batch, keep_probs) -> batch statistics of the model in inference mode."""

    def fn(variables: Variables, batch: dict, keep_probs: bool) -> dict:
        logits = model.apply(variables, prep(batch["image"]), train=False)
        stats = batch_statistics(logits, batch["label"], batch["mask"], num_classes)
        return stats if keep_probs else {k: v for k, v in stats.items() if k != "probs"}

    return jax.jit(fn, static_argnums=2)


def evaluate_batches(eval_fn: Callable, variables: Variables, batches: Iterable[dict], num_classes: int,
                     keep_probs: bool = False) -> SplitStats:
    """Runs `eval_fn` over device `batches` and gathers the valid rows on the host.

    Per-class sums add up on the host in float64; with several processes the statistics are gathered on all
    of them, in the global batch order, so every process gets the one-process result. Batch i + 1 is
    dispatched before batch i is brought to the host, so the device never waits for the host's work.
    """
    return statistics_from_outputs(_overlapped(eval_fn, variables, batches, keep_probs), num_classes, keep_probs)


def _overlapped(eval_fn: Callable, variables: Variables, batches: Iterable[dict], keep_probs: bool):
    """Host (statistics, mask, labels) of every batch, each fetched after the next batch's dispatch."""
    pending = None
    for batch in batches:
        out = (eval_fn(variables, batch, keep_probs), batch["mask"], batch["label"])
        if pending is not None:
            yield sharding.to_host(pending)
        pending = out
    if pending is not None:
        yield sharding.to_host(pending)


def statistics_from_outputs(outputs: Iterable[tuple[dict, np.ndarray, np.ndarray]], num_classes: int,
                            keep_probs: bool = False) -> SplitStats:
    """SplitStats from host (batch statistics, mask, labels) of every batch: valid rows kept, sums added."""
    per_example: dict[str, list] = {"correct": [], "entropy": [], "labels": [], "probs": []}
    prob_sums = np.zeros((num_classes, num_classes), np.float64)
    counts = np.zeros(num_classes, np.int64)
    for out, m, labels in outputs:
        m = np.asarray(m, bool)
        per_example["correct"].append(out["correct"][m])
        per_example["entropy"].append(out["entropy"][m])
        per_example["labels"].append(np.asarray(labels)[m])
        if keep_probs:
            per_example["probs"].append(out["probs"][m])
        prob_sums += out["prob_sums"]
        counts += out["counts"].astype(np.int64)
    cat = lambda xs, shape: np.concatenate(xs) if xs else np.zeros(shape)  # noqa: E731
    return SplitStats(
        correct=cat(per_example["correct"], (0,)).astype(bool), entropy=cat(per_example["entropy"], (0,)),
        labels=cat(per_example["labels"], (0,)).astype(np.int64), prob_sums=prob_sums, counts=counts,
        probs=cat(per_example["probs"], (0, num_classes)) if keep_probs else None)


def split_statistics(ctx: Context, variables: Variables) -> dict[str, SplitStats]:
    """Statistics of one model on every split; softmax outputs are kept for the forget set (JSD)."""
    return {s: ctx.evaluate(variables, s, keep_probs=(s == "forget")) for s in SPLITS}


def save_statistics(path: Path, stats: dict[str, SplitStats]) -> None:
    """Writes one model's statistics as a .npz (`<split>.<field>` keys)."""
    arrays = {}
    for split, st in stats.items():
        for field in ("correct", "entropy", "labels", "prob_sums", "counts", "probs"):
            value = getattr(st, field)
            if value is not None:
                arrays[f"{split}.{field}"] = value
    files.write_npz(path, **arrays)


def _unseen_sums(stats: dict[str, SplitStats], unseen: str) -> tuple[np.ndarray, np.ndarray]:
    parts = ("val", "test") if unseen == "val+test" else (unseen,)
    return (sum(stats[p].prob_sums for p in parts), sum(stats[p].counts for p in parts))


def model_metrics(stats: dict[str, SplitStats], original: dict[str, SplitStats],
                  gold: dict[str, SplitStats] | None, *, form: str = "textbook", rf_unseen: str = "val",
                  seed: int = 0) -> dict[str, Any]:
    """Metrics of one model: accuracies, MIA, RF-JSD (vs the original model on unseen data), and JSD and
    Avg Gap against the gold model when there is one. Both JSD forms are stored; `jsd`/`rf_jsd` hold `form`.
    """
    if form not in JSD_FORMS:
        raise ValueError(f"unknown JSD form {form!r}; valid: {', '.join(JSD_FORMS)}")
    m: dict[str, Any] = {f"acc_{s}": stats[s].accuracy for s in SPLITS}
    unseen_entropy = np.concatenate([stats["val"].entropy, stats["test"].entropy])
    m["mia"] = mia(stats["retain"].entropy, unseen_entropy, stats["forget"].entropy, seed=seed)
    q_sums, q_counts = _unseen_sums(original, rf_unseen)
    for f in JSD_FORMS:
        m[f"rf_jsd_{f}"] = float(rf_jsd(jnp.asarray(stats["forget"].prob_sums), jnp.asarray(stats["forget"].counts),
                                        jnp.asarray(q_sums), jnp.asarray(q_counts), form=f))
    m["rf_jsd"] = m[f"rf_jsd_{form}"]
    if gold is not None:
        for f in JSD_FORMS:
            m[f"jsd_{f}"] = float(jsd(jnp.asarray(stats["forget"].probs), jnp.asarray(gold["forget"].probs), form=f))
        m["jsd"] = m[f"jsd_{form}"]
    return m


def summarize(all_stats: dict[str, dict[str, SplitStats]], times: dict[str, float], *, form: str = "textbook",
              rf_unseen: str = "val", compat: bool = False, seed: int = 0) -> dict[str, Any]:
    """`metrics.json` content from the statistics of 'original', optional 'gold', and each method."""
    decimals = 2 if compat else None
    gold = all_stats.get("gold")
    models: dict[str, dict[str, Any]] = {}
    for name, stats in all_stats.items():
        models[name] = model_metrics(stats, all_stats["original"], gold, form=form, rf_unseen=rf_unseen, seed=seed)
        if name in times:
            models[name]["time_s"] = float(times[name])
    if "gold" in models:
        for name, m in models.items():
            m["avg_gap"] = avg_gap(m, models["gold"], decimals=decimals)
    return {"jsd_form": form, "rf_jsd_unseen": rf_unseen, "compat": compat, "models": models}


def _over_seeds(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and `<key>_std` (ddof=0) of every numeric entry, nested dicts alike; the first failure if any."""
    failed = [e["failed"] for e in entries if e.get("failed")]
    if failed:
        return {"failed": failed[0]}
    out: dict[str, Any] = {}
    for k, v in entries[0].items():
        if isinstance(v, dict):
            out[k] = _over_seeds([e.get(k, {}) for e in entries])
        elif isinstance(v, (int, float)) and not isinstance(v, bool) and not k.endswith("_std"):
            vals = np.array([e[k] for e in entries], np.float64)
            out[k], out[f"{k}_std"] = float(vals.mean()), float(vals.std())
    return out


def aggregate(per_seed: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Mean and standard deviation (`<key>_std`, ddof=0) over seeds of every numeric metric of each model, and
    of every score of the audit when each seed ran one (a population's spread across its members is dropped:
    the table then shows the spread across seeds).

    A model that failed under any seed is reported as failed (with the first reason).
    """
    runs = list(per_seed.values())
    models = {name: _over_seeds([r["models"].get(name, {"failed": "missing"}) for r in runs])
              for name in runs[0]["models"]}
    first = runs[0]
    out = {"jsd_form": first["jsd_form"], "rf_jsd_unseen": first["rf_jsd_unseen"], "compat": first["compat"],
           "seeds": list(per_seed), "models": models}
    if all(r.get("audit") for r in runs):
        audits = [r["audit"] for r in runs]
        out["audit"] = {"models": first["audit"]["models"], "originals": first["audit"]["originals"],
                        "seeds": list(per_seed), **({"settings": first["audit"]["settings"]}
                                                    if "settings" in first["audit"] else {}),
                        **{part: _over_seeds([a[part] for a in audits]) for part in ("floor", "ceiling", "gold")},
                        "methods": {name: _over_seeds([a["methods"].get(name, {"failed": "missing"}) for a in audits])
                                    for name in first["audit"]["methods"]}}
    return out
