"""The audit stage end to end on a tiny digits run: populations trained as vmapped ensembles, the audit
section of metrics.json with floor and ceiling, the report table and figures, and a rerun that reloads the
populations instead of training them again. Population statistics are checked against single-model passes."""

import json
import math

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from lotus_jax import audit, main
from lotus_jax.evaluate import SPLITS
from lotus_jax.metrics.audit import logit_confidence
from lotus_jax.train.population import member, population_mesh, stack
from tests.methods.helpers import trained_problem
from tests.test_main import tiny_config

SCALARS = ("forget_score", "final_score", "ulira_auc", "ulira_balanced_accuracy", "ulira_tpr_at_1pct_fpr",
           "mean_epsilon")


def audit_config():
    c = tiny_config()
    c.stages = "train,audit"
    c.mesh.data = 1  # the population's member axis has its own mesh (audit.mesh_models)
    c.audit.models = 4
    c.audit.methods = "lotus"  # per-member acc_f, tau and stop rule inside the population
    c.lotus.epochs = 2
    return c


@pytest.fixture(scope="module")
def audited(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("audit")
    return workdir, main.run(audit_config(), workdir)


def test_audit_writes_scores_for_each_method_with_floor_and_ceiling(audited):
    workdir, metrics = audited
    section = json.loads((workdir / "metrics.json").read_text())["audit"]
    assert section == json.loads(json.dumps(metrics["audit"]))
    assert section["models"] == 4 and section["originals"] == "one"
    assert set(section["methods"]) == {"lotus"}
    for entry in (*section["methods"].values(), section["floor"], section["ceiling"]):
        for key in SCALARS:
            assert isinstance(entry[key], float) and math.isfinite(entry[key]), key
        assert 0.0 <= entry["forget_score"] <= 1.0 and 0.0 <= entry["ulira_auc"] <= 1.0
    # The floor is N copies of the one original model: a point mass, epsilon 50 on every example, score 0.
    assert section["floor"]["mean_epsilon"] == 50.0 and section["floor"]["forget_score"] == 0.0
    for entry in section["methods"].values():
        assert entry["time_per_model_s"] > 0
        pop = entry["population"]
        for key in ("acc_forget", "acc_test", "mia", "jsd", "rf_jsd"):
            assert math.isfinite(pop[key]) and pop[f"{key}_std"] >= 0.0
    report = (workdir / "report.md").read_text()
    assert "## Per-example forgetting audit" in report and "| lotus |" in report and "ceiling" in report
    for fig in ("audit_epsilon.png", "audit_roc.png", "audit_confidence.png"):
        assert (workdir / fig).stat().st_size > 1000 and f"]({fig})" in report
    scores = np.load(workdir / "audit" / "scores.npz")
    assert scores["lotus.confidence"].shape == (4, len(np.load(workdir / "splits.npz")["forget"]))


def test_a_rerun_reloads_the_populations(audited, capsys):
    workdir, metrics = audited
    again = main.run(audit_config(), workdir)
    out = capsys.readouterr().out
    for name in ("gold", "lotus"):
        assert f"[audit/{name}] population found" in out
    assert again["audit"]["methods"]["lotus"]["forget_score"] == metrics["audit"]["methods"]["lotus"]["forget_score"]


def test_population_statistics_are_those_of_each_member_alone():
    # Catches a vmapped evaluation that mixes members (member m's statistics from another member's outputs)
    # or a confidence computed for the wrong label.
    ctx, original = trained_problem(seed=0)
    other = jax.tree.map(lambda x: x * 0.9, original)
    variables = stack([original, other])
    stats = audit.population_statistics(ctx, variables, NamedSharding(population_mesh(1), P("models")))
    for m, v in enumerate((original, other)):
        for split in SPLITS:
            alone = ctx.evaluate(v, split, keep_probs=split == "forget")
            np.testing.assert_array_equal(stats.stats[m][split].correct, alone.correct)
            np.testing.assert_allclose(stats.stats[m][split].prob_sums, alone.prob_sums, rtol=1e-5, atol=1e-6)
        idx = ctx.splits.forget
        logits = ctx.model.apply(member(variables, m), ctx.prep(ctx.dataset.train.get(idx)), train=False)
        np.testing.assert_allclose(stats.confidence[m], logit_confidence(np.asarray(logits),
                                                                         ctx.dataset.train.labels[idx]),
                                   rtol=1e-4, atol=1e-4)


def test_member_seeds_are_distinct_and_depend_on_the_run_seed_and_population():
    a = audit.member_seeds(3407, "gold", 16)
    assert len(set(a)) == 16 and a == audit.member_seeds(3407, "gold", 16)
    assert a != audit.member_seeds(13, "gold", 16) and a != audit.member_seeds(3407, "lotus", 16)
