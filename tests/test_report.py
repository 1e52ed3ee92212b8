"""Report rendering from a hand-written metrics.json, seed aggregation, and figures from saved files."""

import json

import numpy as np
import pytest

from lotus_jax import evaluate, report

METRICS = {
    "jsd_form": "compat", "rf_jsd_unseen": "test", "compat": True,
    "models": {
        "gold": {"mia": 0.76, "acc_forget": 0.91, "acc_retain": 0.99, "acc_test": 0.91, "avg_gap": 0.0,
                 "jsd": 0.0, "rf_jsd": 1e-4},
        "original": {"mia": 0.94, "acc_forget": 1.0, "acc_retain": 1.0, "acc_test": 0.93, "avg_gap": 0.075,
                     "jsd": 4.1e-5, "rf_jsd": 1.2e-4},
        "lotus": {"mia": 0.82, "acc_forget": 0.99, "acc_retain": 0.99, "acc_test": 0.91, "avg_gap": 0.035,
                  "jsd": 3.2e-5, "rf_jsd": 1.1e-4, "time_s": 17.4},
        "finetune": {"mia": 0.30, "acc_forget": 0.97, "acc_retain": 0.98, "acc_test": 0.89, "avg_gap": 0.1375,
                     "jsd": 1.03e-4, "rf_jsd": 2.2e-4, "time_s": 25.8},
        "unsir": {"failed": "FloatingPointError: loss is nan"},
    },
}


def test_table_marks_best_per_column_and_reports_failures():
    t = report.table(METRICS)
    rows = {line.split("|")[1].strip(): line for line in t.splitlines()[2:]}
    assert list(rows)[:2] == ["gold", "original"]
    assert "**0.0350**" in rows["lotus"] and "**0.32**" in rows["lotus"]  # Avg Gap, JSD ×1e4
    assert "**17.40**" in rows["lotus"] and "25.80" in rows["finetune"]
    assert "**0.8200**" in rows["lotus"]  # MIA closest to gold's 0.76 among unlearned models
    assert "**0.9700**" in rows["finetune"]  # acc forget 0.97 is closer to 0.91 than 0.99
    assert "unsir (failed: FloatingPointError: loss is nan)" in t
    assert "| — |" in rows["gold"] + "|"  # no time for the gold model


AUDIT = {
    "models": 6, "originals": "one",
    "methods": {"lotus": {"forget_score": 0.125, "final_score": 0.1, "ulira_auc": 0.61, "ulira_tpr_at_1pct_fpr": 0.03,
                          "mean_epsilon": 2.345, "time_per_model_s": 1.5,
                          "population": {"acc_forget": 0.9, "acc_forget_std": 0.01, "acc_test": 0.8,
                                         "acc_test_std": 0.02, "mia": 0.5, "mia_std": 0.04}}},
    "floor": {"forget_score": 0.0, "final_score": 0.0, "ulira_auc": 0.99, "ulira_tpr_at_1pct_fpr": 0.9,
              "mean_epsilon": 50.0, "population": {"acc_forget": 1.0, "acc_forget_std": 0.0}},
    "ceiling": {"forget_score": 0.3, "final_score": 0.3, "ulira_auc": 0.5, "ulira_tpr_at_1pct_fpr": 0.01,
                "mean_epsilon": 1.0},
}


def test_audit_table_cells():
    # Catches columns under the wrong heading (each value is distinct), a population metric shown without
    # its spread, and rows out of order (ceiling, methods, floor).
    lines = report.audit_table(AUDIT).splitlines()
    head = [c.strip() for c in lines[0].split("|")[1:-1]]
    rows = [[c.strip() for c in line.split("|")[1:-1]] for line in lines[2:]]
    assert [r[0] for r in rows] == ["ceiling (gold vs gold, 3 + 3)", "lotus", "floor (original, not unlearned)"]
    lotus = dict(zip(head, rows[1]))
    assert lotus == {"population": "lotus", "Forget score": "0.1250", "Final score": "0.1000",
                     "U-LiRA AUC": "0.6100", "TPR@1%FPR": "0.0300", "mean ε": "2.35", "Time per model (s)": "1.50",
                     "Acc forget": "0.9000 ± 0.0100", "Acc test": "0.8000 ± 0.0200", "MIA": "0.5000 ± 0.0400"}
    floor, ceiling = dict(zip(head, rows[2])), dict(zip(head, rows[0]))
    assert floor["mean ε"] == "50.00" and floor["Acc forget"] == "1.0000 ± 0.0000" and floor["MIA"] == "—"
    assert ceiling["Time per model (s)"] == "—" and ceiling["Acc test"] == "—"


def test_render_says_which_jsd_form():
    text = report.render(METRICS)
    assert "compat" in text and "`test` split" in text and "rounded to 2 decimals" in text


def test_write_regenerates_from_files(tmp_path):
    (tmp_path / "metrics.json").write_text(json.dumps(METRICS))
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "lotus.json").write_text(json.dumps({"acc_u": 0.9, "history": [
        {"epoch": 1, "acc_f": 1.0, "tau": 2.2, "loss": 0.5}, {"epoch": 2, "acc_f": 0.89, "tau": None,
                                                               "stopped": True}]}))
    (tmp_path / "stats").mkdir()
    rng = np.random.default_rng(0)
    for name in ("gold", "original", "lotus"):
        np.savez(tmp_path / "stats" / f"{name}.npz", **{f"{s}.entropy": rng.exponential(size=50)
                                                       for s in ("forget", "retain", "test")})
    out = report.write(tmp_path)
    text = out.read_text()
    for fig in ("gap_time.png", "lotus_history.png", "entropy.png"):
        assert (tmp_path / fig).read_bytes()[:4] == b"\x89PNG" and f"]({fig})" in text
    with pytest.raises(FileNotFoundError, match="run the evaluate or audit stage"):
        report.write(tmp_path / "nowhere")


def test_aggregate_mean_and_std_over_seeds():
    a = {"jsd_form": "textbook", "rf_jsd_unseen": "val", "compat": False,
         "models": {"lotus": {"mia": 0.5, "time_s": 10.0}, "scrub": {"mia": 0.1}}}
    b = {"jsd_form": "textbook", "rf_jsd_unseen": "val", "compat": False,
         "models": {"lotus": {"mia": 0.7, "time_s": 14.0}, "scrub": {"failed": "diverged"}}}
    agg = evaluate.aggregate({1: a, 2: b})
    assert agg["seeds"] == [1, 2]
    assert agg["models"]["lotus"]["mia"] == pytest.approx(0.6)
    assert agg["models"]["lotus"]["mia_std"] == pytest.approx(0.1)
    assert agg["models"]["lotus"]["time_s_std"] == pytest.approx(2.0)
    assert agg["models"]["scrub"] == {"failed": "diverged"}
    assert "0.6000 ± 0.1000" in report.table(agg)
    assert "audit" not in agg  # no seed ran one


def test_aggregate_audit_over_seeds():
    # Each seed's audit section: scores averaged over seeds with their spread, the members' spread of the
    # population metrics dropped (the table's ± is then over seeds), a method failed under one seed failed.
    runs = {}
    for seed, (score, acc) in {1: (0.1, 0.8), 2: (0.3, 0.6)}.items():
        audit = json.loads(json.dumps(AUDIT))
        audit["methods"]["lotus"]["forget_score"] = score
        audit["methods"]["lotus"]["population"]["acc_forget"] = acc
        audit["methods"]["scrub"] = {"forget_score": 0.5} if seed == 1 else {"failed": "diverged"}
        audit["gold"] = {"time_per_model_s": 2.0 * seed}
        runs[seed] = {**METRICS, "audit": audit}
    agg = evaluate.aggregate(runs)["audit"]
    assert (agg["models"], agg["originals"], agg["seeds"]) == (6, "one", [1, 2])
    lotus = agg["methods"]["lotus"]
    assert lotus["forget_score"] == pytest.approx(0.2) and lotus["forget_score_std"] == pytest.approx(0.1)
    assert lotus["population"]["acc_forget"] == pytest.approx(0.7)
    assert lotus["population"]["acc_forget_std"] == pytest.approx(0.1)  # over seeds, not the members' 0.01
    assert agg["methods"]["scrub"] == {"failed": "diverged"}
    assert agg["gold"]["time_per_model_s"] == pytest.approx(3.0)
    assert agg["floor"]["mean_epsilon"] == 50.0 and agg["floor"]["mean_epsilon_std"] == 0.0
    section = "\n".join(report.audit_section(agg))
    assert "| lotus | 0.2000 ± 0.1000 |" in section and "0.7000 ± 0.1000" in section
    assert "scrub (failed: diverged)" in section and "over the seeds 1, 2" in section
