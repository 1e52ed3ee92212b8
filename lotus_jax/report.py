"""`report.md` from `metrics.json`: the paper-style table, best value per column in bold.

    python -m lotus_jax.report <workdir>

regenerates the report from the saved metrics without recomputing anything.
"""

from __future__ import annotations

import json
import math
import sys
from typing import Any

from absl import app, logging
from etils import epath

from lotus_jax import files

# (key, header, scale, rule): rule "min" = lower is better, "gold" = closest to the gold model is best.
COLUMNS = (
    ("mia", "MIA", 1.0, "gold"),
    ("acc_forget", "Acc forget", 1.0, "gold"),
    ("acc_retain", "Acc retain", 1.0, "gold"),
    ("acc_val", "Acc val", 1.0, "gold"),
    ("acc_test", "Acc test", 1.0, "gold"),
    ("avg_gap", "Avg Gap", 1.0, "min"),
    ("jsd", "JSD ×1e4", 1e4, "min"),
    ("rf_jsd", "RF-JSD ×1e4", 1e4, "min"),
    ("time_s", "Time (s)", 1.0, "min"),
)
REFERENCE_ROWS = ("gold", "original")


def _order(models: dict[str, Any]) -> list[str]:
    return [m for m in REFERENCE_ROWS if m in models] + [m for m in models if m not in REFERENCE_ROWS]


def _best(models: dict[str, dict], key: str, rule: str) -> set[str]:
    """Names of the unlearned models with the best value in a column (ties all marked)."""
    cands = {n: m[key] for n, m in models.items()
             if n not in REFERENCE_ROWS and isinstance(m.get(key), (int, float)) and math.isfinite(m[key])}
    if not cands:
        return set()
    if rule == "gold":
        if "gold" not in models or key not in models["gold"]:
            return set()
        score = {n: abs(v - models["gold"][key]) for n, v in cands.items()}
    else:
        score = cands
    best = min(score.values())
    return {n for n, v in score.items() if abs(v - best) <= 1e-12}


def table(metrics: dict[str, Any]) -> str:
    """The comparison table in Markdown; columns without any value are left out."""
    models = metrics["models"]
    cols = [c for c in COLUMNS if any(c[0] in m for m in models.values())]
    lines = ["| model | " + " | ".join(c[1] for c in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    best = {c[0]: _best(models, c[0], c[3]) for c in cols}
    for name in _order(models):
        m, cells = models[name], []
        for key, _, scale, _ in cols:
            v = m.get(key)
            if not isinstance(v, (int, float)):
                cells.append("—")
                continue
            fmt = ".2f" if key in ("jsd", "rf_jsd", "time_s") else ".4f"
            text = format(v * scale, fmt)
            if isinstance(m.get(f"{key}_std"), (int, float)):
                text += " ± " + format(m[f"{key}_std"] * scale, fmt)
            cells.append(f"**{text}**" if name in best[key] else text)
        status = "" if not models[name].get("failed") else f" (failed: {models[name]['failed']})"
        lines.append(f"| {name}{status} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


AUDIT_COLUMNS = (
    ("forget_score", "Forget score", ".4f"), ("final_score", "Final score", ".4f"), ("ulira_auc", "U-LiRA AUC", ".4f"),
    ("ulira_tpr_at_1pct_fpr", "TPR@1%FPR", ".4f"), ("mean_epsilon", "mean ε", ".2f"),
    ("time_per_model_s", "Time per model (s)", ".2f"),
)


def audit_table(audit: dict[str, Any]) -> str:
    """The per-example audit in Markdown: the gold-vs-gold ceiling, each method, the original-model floor."""
    rows = [(f"ceiling (gold vs gold, {audit['models'] // 2} + {audit['models'] - audit['models'] // 2})",
             audit["ceiling"])]
    rows += [(name if not m.get("failed") else f"{name} (failed: {m['failed']})", m)
             for name, m in audit["methods"].items()]
    rows += [("floor (original, not unlearned)", audit["floor"])]
    pop_keys = ("acc_forget", "acc_test", "mia")
    lines = ["| population | " + " | ".join(c[1] for c in AUDIT_COLUMNS) + " | Acc forget | Acc test | MIA |",
             "|---" * (len(AUDIT_COLUMNS) + 4) + "|"]
    for label, m in rows:
        cells = [("—" if not isinstance(m.get(k), (int, float)) else format(m[k], fmt) if f"{k}_std" not in m
                  else f"{format(m[k], fmt)} ± {format(m[k + '_std'], fmt)}") for k, _, fmt in AUDIT_COLUMNS]
        pop = m.get("population", {})
        cells += [f"{pop[k]:.4f} ± {pop[k + '_std']:.4f}" if k in pop else "—" for k in pop_keys]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def audit_section(audit: dict[str, Any]) -> list[str]:
    n, originals = audit["models"], audit["originals"]
    start = "one original model (the NeurIPS 2023 challenge protocol)" if originals == "one" else \
        "one original model per member"
    return [
        "## Per-example forgetting audit", "",
        audit_table(audit), "",
        f"Populations of {n} models each, every member with its own seed (initialisation, data order, method "
        f"randomness); unlearned members start from {start}. Per forget example the challenge's epsilon compares "
        "the logit-scaled confidences of the unlearned and the retrained (gold) population; the forget score "
        "averages 2^-bucket points over examples (higher: more examples indistinguishable from never trained), "
        "the final score multiplies it by the retain- and test-accuracy ratios. U-LiRA fits a Gaussian per "
        "example and population, leave one model out; AUC 0.5 means the attack cannot tell unlearned from "
        "retrained models. With few models even identical populations score well below 1, so read each method "
        "between the ceiling (two halves of the gold population against each other, N/2 models per side, so "
        "a conservative anchor; its accuracies and MIA are the gold population's) and the floor (the original "
        "model(s) scored as if unlearned"
        + ("; one original repeated N times is a point mass, so every example gets the cap, ε = 50). "
           if originals == "one" else "). ")
        + (f"Every value: mean ± standard deviation over the seeds {', '.join(map(str, audit['seeds']))} (accuracies "
           "and MIA: of each seed's mean across members)." if audit.get("seeds") else
           "Accuracies and MIA: mean ± standard deviation across members."),
    ]


def render(metrics: dict[str, Any], config_text: str | None = None, figures: list[tuple[str, str]] = ()) -> str:
    """The whole `report.md`; `figures` are (file name, caption) pairs embedded after their table."""
    form = metrics.get("jsd_form", "textbook")
    form_text = ("textbook JSD (0.5·KL(p‖m) + 0.5·KL(q‖m), bounded by ln 2)" if form == "textbook" else
                 "the reference code's `compat` JSD form (reversed KL, divided by the number of rows), the form "
                 "of the published numbers")
    parts = ["# LoTUS unlearning report"]
    data = metrics.get("data")
    if data:
        sizes = ", ".join(f"{k} {v:,}" for k, v in data["splits"].items())
        parts += ["", f"Data: {data['name']}, {len(data['classes'])} classes; {sizes} examples."]
    if metrics.get("models"):
        parts += [
            "", table(metrics), "",
            (f"JSD and RF-JSD are in {form_text}, shown ×1e4. RF-JSD compares each model's class-mean softmax on "
             f"the forget set with the original model's on the `{metrics.get('rf_jsd_unseen', 'val')}` split. "
             "Avg Gap is the mean absolute difference to the gold model over MIA and forget/retain/test accuracy "
             "(lower is better). Bold: best unlearned model per column (closest to gold for MIA and accuracies). "
             "Time: wall-clock seconds of each method's unlearning call, compiling its XLA programs included (on a "
             "small problem most of it: the per-epoch `seconds` in `results/<method>.json` show the first epoch "
             "holding it)."),
        ]
    if metrics.get("seeds"):
        parts += ["", f"Mean ± standard deviation over seeds {', '.join(map(str, metrics['seeds']))}."]
    for file, caption in figures:
        if not file.startswith("audit_"):
            parts += ["", f"![{caption}]({file})", "", f"*{caption}*"]
    if metrics.get("audit"):
        parts += ["", *audit_section(metrics["audit"])]
        for file, caption in figures:
            if file.startswith("audit_"):
                parts += ["", f"![{caption}]({file})", "", f"*{caption}*"]
    if metrics.get("compat"):
        parts += ["", "compat mode: accuracies and MIA rounded to 2 decimals before gaps and temperatures."]
    if config_text:
        parts += ["", "<details><summary>config of the last run in this workdir</summary>", "", "```json",
                  config_text, "```", "", "</details>"]
    return "\n".join(parts) + "\n"


def write(workdir: epath.PathLike) -> epath.Path:
    """Regenerates `report.md` and its figures in `workdir` from saved files only: `metrics.json`, and
    where present `config.json`, `results/*.json` (per-epoch histories) and `stats/*.npz` (entropies)."""
    from lotus_jax import figures

    workdir = epath.Path(workdir)
    metrics_path = workdir / "metrics.json"
    if not metrics_path.exists():
        raise FileNotFoundError(f"{metrics_path} does not exist; run the evaluate or audit stage first")
    metrics = json.loads(metrics_path.read_text())
    cfg = workdir / "config.json"
    made = figures.write_all(workdir, metrics)
    out = workdir / "report.md"
    files.write_text(out, render(metrics, cfg.read_text() if cfg.exists() else None, made))
    return out


def main(argv: list[str]) -> None:
    if len(argv) != 2:
        raise app.UsageError("usage: python -m lotus_jax.report <workdir>")
    logging.set_verbosity(logging.ERROR)  # jax logs the backends it did not find; only the report's path is news
    try:
        print(write(epath.Path(argv[1])))
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    app.run(main)
