"""Is RF-JSD a valid proxy for JSD? Pearson and Spearman correlations over every unlearned model of a study.

    python experiments/rfjsd_correlation.py <study folder> [--out <folder>] [--form textbook|compat]

Reads every `metrics.json` of the instance-unlearning runs below the study folder (`instance/seed_*/`,
`variants/*/`; the class-unlearning and audit runs are other protocols and left out), takes each
unlearned model's (RF-JSD, JSD) pair — the original and gold rows are left out — and prints the correlations
over all points and per seed with the paper's claim (Pearson 0.92 ± 0.04) next to them. With `--out`, writes
`rfjsd_vs_jsd.png` (scatter, one colour per method) and `correlation.json` there.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from scipy import stats

REFERENCE = ("original", "gold")
INSTANCE_RUNS = ("instance", "variants")


def points(study: Path, form: str) -> list[dict]:
    """One point per unlearned model of every run below `study` that has a gold model (JSD needs it)."""
    out = []
    for path in sorted(study.rglob("metrics.json")):
        models = json.loads(path.read_text()).get("models", {})
        if "seeds" in json.loads(path.read_text()):
            continue  # the mean ± std table of a multi-seed run; its seeds are read from seed_*/
        if path.parent.relative_to(study).parts[0] not in INSTANCE_RUNS:
            continue
        for name, m in models.items():
            if name in REFERENCE or m.get("failed") or f"jsd_{form}" not in m:
                continue
            run = path.parent.relative_to(study)
            label = name if run.parts[0] != "variants" else f"lotus ({run.name.split('_', 2)[-1]})"
            seed = next((p.split("_")[1] for p in run.parts if p.startswith("seed_")), "?")
            out.append({"run": str(run), "method": label, "seed": seed, "rf_jsd": m[f"rf_jsd_{form}"],
                        "jsd": m[f"jsd_{form}"]})
    return out


def correlations(pts: list[dict]) -> dict[str, float]:
    x = np.array([p["rf_jsd"] for p in pts])
    y = np.array([p["jsd"] for p in pts])
    return {"n": len(pts), "pearson": float(stats.pearsonr(x, y)[0]), "spearman": float(stats.spearmanr(x, y)[0])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("study", type=Path)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--form", default="textbook", choices=("textbook", "compat"))
    args = ap.parse_args()
    pts = points(args.study, args.form)
    if len(pts) < 3:
        raise SystemExit(f"error: {len(pts)} (RF-JSD, JSD) points below {args.study}; need at least 3")
    result = {"form": args.form, "all": correlations(pts), "per_seed": {}}
    for seed in sorted({p["seed"] for p in pts}):
        sub = [p for p in pts if p["seed"] == seed]
        if len(sub) >= 3:
            result["per_seed"][seed] = correlations(sub)
    per_seed = [v["pearson"] for v in result["per_seed"].values()]
    if per_seed:
        result["per_seed_pearson_mean"], result["per_seed_pearson_std"] = float(np.mean(per_seed)), float(np.std(per_seed))
    a = result["all"]
    print(f"{a['n']} unlearned models ({args.form} form): Pearson {a['pearson']:.3f}, Spearman {a['spearman']:.3f}")
    for seed, c in result["per_seed"].items():
        print(f"  seed {seed}: n={c['n']} Pearson {c['pearson']:.3f} Spearman {c['spearman']:.3f}")
    if per_seed:
        print(f"per-seed Pearson {result['per_seed_pearson_mean']:.3f} ± {result['per_seed_pearson_std']:.3f} "
              f"(the paper: 0.92 ± 0.04)")
    if args.out:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        args.out.mkdir(parents=True, exist_ok=True)
        fig, ax = plt.subplots(figsize=(6, 4.5))
        colors = plt.get_cmap("tab20").colors
        for i, method in enumerate(sorted({p["method"] for p in pts})):
            sel = [p for p in pts if p["method"] == method]
            ax.scatter([p["rf_jsd"] * 1e4 for p in sel], [p["jsd"] * 1e4 for p in sel], label=method, s=22,
                       color=colors[(2 * i) % 20 + (2 * i) // 20])
        ax.set_xlabel(f"RF-JSD ×1e4 ({args.form})")
        ax.set_ylabel(f"JSD to gold ×1e4 ({args.form})")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(f"Pearson {a['pearson']:.2f}, Spearman {a['spearman']:.2f} (n={a['n']})")
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        fig.savefig(args.out / "rfjsd_vs_jsd.png", dpi=110)
        (args.out / "correlation.json").write_text(json.dumps({**result, "points": pts}, indent=2))
        print(f"wrote {args.out / 'rfjsd_vs_jsd.png'} and {args.out / 'correlation.json'}")


if __name__ == "__main__":
    main()
