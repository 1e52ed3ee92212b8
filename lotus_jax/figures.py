"""Report figures (PNG, matplotlib Agg) drawn from what a run saved: metrics, histories, entropies."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from lotus_jax import files  # noqa: E402

SPLIT_COLORS = {"forget": "tab:red", "retain": "tab:blue", "test": "tab:green"}


def _save(fig: Any, path: Any) -> None:
    """Writes the figure as PNG through `files` (atomic, process 0, local or bucket paths) and closes it."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    files.write_bytes(path, buf.getvalue())


def _run_dirs(workdir: Path, metrics: dict[str, Any]) -> list[Path]:
    """The folders holding per-run files: the workdir itself, or one per seed."""
    if metrics.get("seeds"):
        return [workdir / f"seed_{s}" for s in metrics["seeds"]]
    return [workdir]


def _order(models: dict[str, Any]) -> list[str]:
    ref = [m for m in ("gold", "original") if m in models]
    return ref + [m for m in models if m not in ref]


def gap_and_time(metrics: dict[str, Any], path: Path) -> bool:
    """Bar charts of Avg Gap and unlearning time per method (error bars: std over seeds)."""
    models = {n: m for n, m in metrics["models"].items() if n not in ("gold", "original") and not m.get("failed")}
    if not models:
        return False
    names = list(models)
    fig, axes = plt.subplots(1, 2, figsize=(max(6, 1.3 * len(names) + 3), 3.4))
    for ax, key, label in ((axes[0], "avg_gap", "Avg Gap (lower is better)"), (axes[1], "time_s", "time (s)")):
        vals = [models[n].get(key, math.nan) for n in names]
        errs = [models[n].get(f"{key}_std", 0.0) for n in names]
        colors = ["tab:orange" if n == "lotus" else "tab:gray" for n in names]
        ax.bar(names, vals, yerr=errs if any(errs) else None, color=colors, capsize=3)
        if key == "avg_gap" and "original" in metrics["models"] and "avg_gap" in metrics["models"]["original"]:
            ax.axhline(metrics["models"]["original"]["avg_gap"], ls="--", c="k", lw=1, label="original")
            ax.legend(fontsize=8)
        ax.set_title(label, fontsize=10)
        ax.tick_params(axis="x", rotation=45, labelsize=8)
    fig.tight_layout()
    _save(fig, path)
    return True


def lotus_history(run_dir: Path, path: Path) -> bool:
    """LoTUS's per-epoch temperature and forget accuracy (from results/lotus.json)."""
    rec_path = run_dir / "results" / "lotus.json"
    if not rec_path.exists():
        return False
    rec = json.loads(rec_path.read_text())
    hist = rec.get("history", [])
    if not hist:
        return False
    epochs = [h["epoch"] for h in hist]
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(epochs, [h["acc_f"] for h in hist], "o-", c="tab:red", label="acc forget (student)")
    if "acc_u" in rec:
        ax.axhline(rec["acc_u"], ls="--", c="tab:green", lw=1, label="acc unseen (teacher)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy")
    ax2 = ax.twinx()
    taus = [(e, h["tau"]) for e, h in zip(epochs, hist) if h.get("tau") is not None]
    if taus:
        ax2.plot(*zip(*taus), "s-", c="tab:blue", label="temperature τ")
    ax2.set_ylabel("τ")
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], fontsize=8, loc="best")
    fig.tight_layout()
    _save(fig, path)
    return True


def entropy_histograms(run_dir: Path, models: list[str], path: Path) -> bool:
    """Histograms of softmax entropy on forget, retain and test examples per model: what the MIA sees."""
    stats = {}
    for name in models:
        f = run_dir / "stats" / f"{name}.npz"
        if f.exists():
            with np.load(f) as z:
                stats[name] = {s: z[f"{s}.entropy"] for s in SPLIT_COLORS if f"{s}.entropy" in z}
    if not stats:
        return False
    hi = max(float(np.max(v)) for st in stats.values() for v in st.values() if len(v)) or 1.0
    bins = np.linspace(0.0, hi, 40)
    cols = min(3, len(stats))
    rows = -(-len(stats) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.8 * rows), squeeze=False)
    for ax, (name, st) in zip(axes.flat, stats.items()):
        for split, values in st.items():
            ax.hist(values, bins=bins, density=True, alpha=0.45, color=SPLIT_COLORS[split], label=split)
        ax.set_yscale("log")
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("entropy (nats)", fontsize=8)
        ax.set_ylabel("density (log scale)", fontsize=8)
    for ax in list(axes.flat)[len(stats):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)
    return True


def write_all(workdir: Path, metrics: dict[str, Any]) -> list[tuple[str, str]]:
    """Draws every figure the saved files allow; returns (file name, caption) of those drawn."""
    run_dir = _run_dirs(workdir, metrics)[0]
    seed_note = f" (seed {metrics['seeds'][0]})" if metrics.get("seeds") else ""
    made = []
    if metrics.get("audit"):
        made += audit_figures(workdir, metrics["audit"])
    if not metrics.get("models"):
        return made
    if gap_and_time(metrics, workdir / "gap_time.png"):
        made.append(("gap_time.png", "Avg Gap to the gold model and unlearning time per method"))
    if lotus_history(run_dir, workdir / "lotus_history.png"):
        made.append(("lotus_history.png", f"LoTUS per epoch: student forget accuracy and temperature{seed_note}"))
    if entropy_histograms(run_dir, _order(metrics["models"]), workdir / "entropy.png"):
        made.append(("entropy.png", f"Entropy of the softmax on forget, retain and test examples{seed_note}"))
    return made


def _audit_arrays(workdir: Path) -> dict[str, np.ndarray] | None:
    path = workdir / "audit" / "scores.npz"
    if not path.exists():
        return None
    with path.open("rb") as f:
        return dict(np.load(f))


def audit_figures(workdir: Path, audit: dict[str, Any]) -> list[tuple[str, str]]:
    """Epsilon distributions, U-LiRA ROC curves, and confidence histograms of the most and least forgotten
    examples, from `audit/scores.npz`."""
    arrays = _audit_arrays(workdir)
    if arrays is None:
        return []
    scored = [m for m, entry in audit["methods"].items() if not entry.get("failed")]
    rows = ["ceiling", *scored, "floor"]
    made = []
    fig, ax = plt.subplots(figsize=(1.2 * len(rows) + 2, 3.6))
    eps = [np.minimum(arrays[f"{r}.epsilon"], 50.0) for r in rows]
    ax.boxplot(eps, showfliers=True)
    ax.set_xticks(range(1, len(rows) + 1), rows, rotation=20)
    ax.set_ylabel("per-example ε (capped at 50)")
    ax.set_yscale("symlog", linthresh=1.0)
    ax.set_title(f"Per-example epsilon, {audit['models']} models per population (lower: better forgotten)")
    fig.tight_layout()
    _save(fig, workdir / "audit_epsilon.png")
    made.append(("audit_epsilon.png", "Per-example epsilon of each population against the gold population"))

    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    for r in rows:
        fpr, tpr = arrays[f"{r}.ulira_roc_fpr"], arrays[f"{r}.ulira_roc_tpr"]
        ax.plot(np.maximum(fpr, 1e-4), np.maximum(tpr, 1e-4), label=r, lw=1.2)
    ax.plot([1e-4, 1], [1e-4, 1], "k:", lw=0.8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title("U-LiRA (leave one model out)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    _save(fig, workdir / "audit_roc.png")
    made.append(("audit_roc.png", "U-LiRA ROC curves: unlearned vs retrained models (diagonal: indistinguishable)"))

    method = next(iter(scored), None)
    if method is not None and f"{method}.confidence" in arrays:
        order = np.argsort(arrays[f"{method}.epsilon"], kind="stable")
        picks = [("least forgotten", i) for i in order[::-1][:3]] + [("most forgotten", i) for i in order[:3]]
        u, r = arrays[f"{method}.confidence"], arrays["gold.confidence"]
        fig, axes = plt.subplots(2, 3, figsize=(10, 5))
        for ax, (label, i) in zip(axes.ravel(), picks):
            lo, hi = min(u[:, i].min(), r[:, i].min()), max(u[:, i].max(), r[:, i].max())
            bins = np.linspace(lo, hi + 1e-9, 16)
            ax.hist(r[:, i], bins=bins, alpha=0.6, label="retrained (gold)", color="tab:green")
            ax.hist(u[:, i], bins=bins, alpha=0.6, label=method, color="tab:red")
            ax.set_title(f"{label}: example {i}, ε={arrays[f'{method}.epsilon'][i]:.2f}", fontsize=8)
            ax.set_xlabel("logit-scaled confidence", fontsize=8)
        axes[0, 0].legend(fontsize=7)
        fig.tight_layout()
        _save(fig, workdir / "audit_confidence.png")
        made.append(("audit_confidence.png", f"{method}: confidence of unlearned vs retrained models on the three "
                                             f"least and the three most forgotten forget examples"))
    return made
