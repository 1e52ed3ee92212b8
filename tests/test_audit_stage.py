"""The audit stage end to end on a tiny digits run: populations trained as vmapped ensembles (and, with one
original per model, one member after another, the CPU's default), the audit section of metrics.json with floor
and ceiling recomputed from the saved confidences, the report table and figures, a rerun that reloads the
populations and one that retrains a changed one. Population statistics are checked against single-model
passes."""

import json
import math
import shutil

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from lotus_jax import audit, main
from lotus_jax.evaluate import SPLITS
from lotus_jax.methods import finetune
from lotus_jax.metrics.audit import forget_score, logit_confidence, per_example_epsilon, ulira
from lotus_jax.train.population import member, population_mesh, stack
from tests.methods.helpers import trained_problem
from tests.test_main import tiny_config

SCALARS = ("forget_score", "final_score", "ulira_auc", "ulira_balanced_accuracy", "ulira_tpr_at_1pct_fpr",
           "mean_epsilon")


def audit_config():
    c = tiny_config()
    c.stages = "train,audit"
    c.mesh.data = 1  # the population's member axis has its own mesh (audit.mesh_models)
    c.audit.models = 6  # halves of 3 for the ceiling (2 per side give the challenge's score no bucket)
    c.audit.methods = "lotus"  # per-member acc_f and tau inside the population
    c.lotus.epochs = 2
    # This barely trained original already meets the stop rule (acc_f <= acc_u - 0.01) before the first update,
    # which would leave every member equal to it; -1 never stops (stopped members: tests/train/test_population.py).
    c.lotus.stop_threshold = -1.0
    c.audit.vmap = True  # the vmapped ensembles (unset, a CPU trains members one after another)
    return c


@pytest.fixture(scope="module")
def audited(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("audit")
    return workdir, main.run(audit_config(), workdir)


def test_audit_writes_scores_for_each_method_with_floor_and_ceiling(audited):
    workdir, metrics = audited
    section = json.loads((workdir / "metrics.json").read_text())["audit"]
    assert section == json.loads(json.dumps(metrics["audit"]))
    assert section["models"] == 6 and section["originals"] == "one"
    assert set(section["methods"]) == {"lotus"}
    for entry in (*section["methods"].values(), section["floor"], section["ceiling"]):
        for key in SCALARS:
            assert isinstance(entry[key], float) and math.isfinite(entry[key]), key
        assert 0.0 <= entry["forget_score"] <= 1.0 and 0.0 <= entry["ulira_auc"] <= 1.0
    # The floor is N copies of the one original model: a point mass, epsilon 50 on every example, score 0.
    assert section["floor"]["mean_epsilon"] == 50.0 and section["floor"]["forget_score"] == 0.0
    for entry in section["methods"].values():
        assert entry["time_per_model_s"] > 0
    for entry in (*section["methods"].values(), section["ceiling"]):  # the ceiling's: the gold population's
        pop = entry["population"]
        for key in ("acc_forget", "acc_test", "mia", "jsd", "rf_jsd"):
            assert math.isfinite(pop[key]) and pop[f"{key}_std"] >= 0.0
    report = (workdir / "report.md").read_text()
    assert "## Per-example forgetting audit" in report and "| lotus |" in report
    ceiling_row = next(line for line in report.splitlines() if line.startswith("| ceiling"))
    assert ceiling_row.endswith(f"{section['ceiling']['population']['mia']:.4f} ± "
                                f"{section['ceiling']['population']['mia_std']:.4f} |")
    for fig in ("audit_epsilon.png", "audit_roc.png", "audit_confidence.png"):
        assert (workdir / fig).stat().st_size > 1000 and f"]({fig})" in report
    scores = np.load(workdir / "audit" / "scores.npz")
    assert scores["lotus.confidence"].shape == (6, len(np.load(workdir / "splits.npz")["forget"]))


def test_audit_scores_are_those_of_the_saved_confidences(audited):
    # Recomputed from the per-member confidences in scores.npz. Catches U and R swapped when scoring a method
    # (the U-LiRA AUC turns into 1 - AUC), a ceiling from overlapping halves or from the whole gold population.
    workdir, _ = audited
    section = json.loads((workdir / "metrics.json").read_text())["audit"]
    scores = np.load(workdir / "audit" / "scores.npz")
    gold, lotus = scores["gold.confidence"], scores["lotus.confidence"]
    method = section["methods"]["lotus"]
    assert method["ulira_auc"] == ulira(lotus, gold).auc != 0.5
    assert method["forget_score"] == forget_score(per_example_epsilon(lotus, gold), 6)
    ceiling = section["ceiling"]
    assert ceiling["n_models_u"] == ceiling["n_models_r"] == 3
    assert ceiling["ulira_auc"] == ulira(gold[:3], gold[3:]).auc
    assert ceiling["forget_score"] == forget_score(per_example_epsilon(gold[:3], gold[3:]), 3)
    np.testing.assert_array_equal(scores["ceiling.epsilon"], per_example_epsilon(gold[:3], gold[3:]))


def _without_times(tree):
    if isinstance(tree, dict):
        return {k: _without_times(v) for k, v in tree.items() if "time" not in k}
    return tree


def test_a_rerun_reloads_the_populations(audited, capsys):
    workdir, metrics = audited
    again = main.run(audit_config(), workdir)
    out = capsys.readouterr().out
    for name in ("gold", "lotus"):
        assert f"[audit/{name}] population found" in out
    # The whole section (population metrics from the cached statistics included), times aside.
    assert _without_times(again["audit"]) == _without_times(metrics["audit"])


def test_a_population_trained_again_gets_new_statistics(audited, tmp_path, capsys):
    # Changed LoTUS settings retrain its population; its cached statistics (audit/lotus.npz) must go with the
    # old models. Catches a statistics cache reused because only its file and member count were checked.
    workdir, _ = audited
    copy = tmp_path / "run"
    shutil.copytree(workdir, copy)
    c = audit_config()
    c.lotus.alpha = 2.0
    again = main.run(c, copy)
    out = capsys.readouterr().out
    assert "[audit/gold] population found" in out and "[audit/lotus] population found" not in out
    before = np.load(workdir / "audit" / "scores.npz")["lotus.confidence"]
    after = np.load(copy / "audit" / "scores.npz")["lotus.confidence"]
    assert not np.array_equal(after, before)
    assert again["audit"]["methods"]["lotus"]["forget_score"] == forget_score(
        per_example_epsilon(after, np.load(copy / "audit" / "scores.npz")["gold.confidence"]), 6)
    c.data.unlearn_augment = True  # the method's batches go through the augmentation: trained again too
    main.run(c, copy)
    out = capsys.readouterr().out
    assert "[audit/gold] population found" in out and "[audit/lotus] population found" not in out


def test_a_rerun_without_the_audit_keeps_its_section_while_it_still_describes_the_config(audited, tmp_path, capsys):
    # A rerun that only evaluated rewrote metrics.json and report.md without the audit, which stayed on disk.
    # Catches the section dropped, and one kept after an audited method's settings (or audit.models) changed.
    workdir, _ = audited
    copy = tmp_path / "run"
    shutil.copytree(workdir, copy)
    audited_section = json.loads((copy / "metrics.json").read_text())["audit"]
    c = audit_config()
    c.stages, c.methods = "retrain,unlearn,evaluate", "lotus"
    metrics = main.run(c, copy)
    assert metrics["audit"] == audited_section and "lotus" in metrics["models"]
    assert "## Per-example forgetting audit" in (copy / "report.md").read_text()
    changes = {"lotus.alpha": 2.0, "audit.models": 8, "audit.methods": "lotus,finetune",
               "data.unlearn_augment": True, "eval.jsd_form": "compat"}
    for change, value in changes.items():
        changed = audit_config()
        section, key = change.split(".")
        changed[section][key] = value
        assert main.previous_audit(copy, changed) is None, change
        assert "made with other audit, method or evaluation settings" in capsys.readouterr().out
    assert main.previous_audit(copy, audit_config()) == audited_section
    older = json.loads((copy / "metrics.json").read_text())  # written before the section recorded its settings
    del older["audit"]["settings"]
    (copy / "metrics.json").write_text(json.dumps(older))
    assert main.previous_audit(copy, audit_config()) is None
    assert "made by an older version" in capsys.readouterr().out


def test_a_failing_method_is_reported_and_the_others_still_audited(audited, tmp_path, monkeypatch):
    # Finetune's plan raises for every member; LoTUS (reloaded) must still be scored, the report and figures
    # written. Catches a failure that takes the whole audit stage down, or a table/figure that expects every
    # method to have scores.
    workdir, metrics = audited
    copy = tmp_path / "run"
    shutil.copytree(workdir, copy)

    def broken(*args, **kwargs):
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(finetune, "plan", broken)
    c = audit_config()
    c.audit.methods = "finetune,lotus"
    section = main.run(c, copy)["audit"]
    assert section["methods"]["finetune"] == {"failed": "RuntimeError: boom"}
    assert section["methods"]["lotus"]["forget_score"] == metrics["audit"]["methods"]["lotus"]["forget_score"]
    report = (copy / "report.md").read_text()
    assert "| finetune (failed: RuntimeError: boom) | — |" in report and "| lotus |" in report
    for fig in ("audit_epsilon.png", "audit_roc.png", "audit_confidence.png"):
        assert f"]({fig})" in report


def test_one_original_per_model_gives_a_floor_of_their_population(tmp_path, capsys, monkeypatch):
    # audit.originals=per_model: N originals trained as a population of their own, scored as the floor, and
    # each member of a method starting from another of them. Catches a floor built from copies of the run's one
    # original (a point mass: epsilon 50 on every example) or from another population's confidences, and
    # members all starting from one model (the run's original, or original 0).
    starts: dict[int, float] = {}
    plan = finetune.plan

    def spy(ctx, original, cfg, key):
        starts[ctx.seed] = float(np.sum(np.asarray(jax.tree.leaves(original["params"])[0])))
        return plan(ctx, original, cfg, key)

    monkeypatch.setattr(finetune, "plan", spy)
    c = audit_config()
    c.audit.originals = "per_model"
    c.audit.methods = "finetune"
    c.finetune.epochs = 1
    c.audit.vmap = None  # the default: on this CPU, one member after another
    section = main.run(c, tmp_path)["audit"]
    out = capsys.readouterr().out
    assert "[audit] 6 models per population (one member after another)" in out
    assert "[audit/original] 6 models in" in out
    assert len(starts) == 6 and len(set(starts.values())) == 6
    floor = section["floor"]
    assert floor["n_models_u"] == floor["n_models_r"] == 6 and floor["mean_epsilon"] < 50.0
    with (tmp_path / "audit" / "original.npz").open("rb") as f:
        originals = np.load(f)["confidence"]
    gold = np.load(tmp_path / "audit" / "scores.npz")["gold.confidence"]
    np.testing.assert_array_equal(np.load(tmp_path / "audit" / "scores.npz")["floor.epsilon"],
                                  per_example_epsilon(originals, gold))


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


def test_a_population_the_devices_cannot_split_is_refused_before_any_work(tmp_path):
    # audit.mesh_models=-1 resolves to the 8 fake devices, which 6 models do not divide: the run must stop
    # before writing anything, not after training (the config check only sees mesh_models > 0).
    c = audit_config()
    c.audit.mesh_models = -1
    with pytest.raises(main.ConfigError, match="audit.models=6 cannot be split over the 8 devices"):
        main.run(c, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_populations_are_vmapped_unless_on_one_cpu_device_or_set():
    assert audit.use_vmap(None, "gpu") and audit.use_vmap(None, "tpu") and not audit.use_vmap(None, "cpu")
    assert audit.use_vmap(None, "cpu", member_devices=2)
    assert audit.use_vmap(True, "cpu") and not audit.use_vmap(False, "gpu") and not audit.use_vmap(False, "cpu", 4)


def test_member_seeds_are_distinct_and_depend_on_the_run_seed_and_population():
    a = audit.member_seeds(3407, "gold", 16)
    assert len(set(a)) == 16 and a == audit.member_seeds(3407, "gold", 16)
    assert a != audit.member_seeds(13, "gold", 16) and a != audit.member_seeds(3407, "lotus", 16)
