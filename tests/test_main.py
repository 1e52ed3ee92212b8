"""End to end: `main` on a tiny digits config writes metrics.json and report.md, reruns skip finished
stages, and bad input fails with one line and exit code 1 without touching what the workdir holds."""

import dataclasses
import json
import subprocess
import sys

import jax
import numpy as np
import pytest
from pathlib import Path

from configs.default import get_config
from lotus_jax import main

ROOT = Path(__file__).resolve().parents[1]


def tiny_config():
    c = get_config()
    c.model.width = 4
    # Data parallel over 2 of the 8 fake devices: every step all-reduces its gradients as on a real mesh
    # (8 partitions cost 1.7x the time on 2 cores; tests/test_sharding.py and test_multihost.py cover more).
    c.mesh.data = 2
    for stage in ("train", "retrain"):
        c[stage].epochs = 3
    c.lotus.epochs = 2
    c.lotus.batch_size = 64
    c.methods = "lotus,ssd"
    return c


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("run")
    metrics = main.run(tiny_config(), workdir)
    return workdir, metrics


def test_run_writes_metrics_and_report(finished_run):
    workdir, metrics = finished_run
    saved = json.loads((workdir / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(metrics))
    models = saved["models"]
    assert set(models) == {"original", "gold", "lotus", "ssd"}
    for name, m in models.items():
        for key in ("acc_forget", "acc_retain", "acc_val", "acc_test", "mia", "rf_jsd", "jsd", "avg_gap"):
            assert 0.0 <= m[key] <= 1.0, (name, key)
    assert models["gold"]["avg_gap"] == 0.0 and models["gold"]["jsd"] == pytest.approx(0.0, abs=1e-6)
    assert models["lotus"]["time_s"] > 0 and "time_s" not in models["original"]
    assert saved["jsd_form"] == "textbook"
    report = (workdir / "report.md").read_text()
    assert "| lotus |" in report and "| ssd |" in report and "textbook JSD" in report and "Avg Gap" in report
    for fig in ("gap_time.png", "lotus_history.png", "entropy.png"):
        assert (workdir / fig).stat().st_size > 1000 and f"]({fig})" in report
    for f in ("config.json", "splits.npz", "stats/original.npz", "stats/lotus.npz", "results/lotus.json"):
        assert (workdir / f).exists(), f
    for ck in ("original", "gold", "lotus"):
        assert (workdir / "checkpoints" / ck / "_CHECKPOINT_METADATA").exists()
    splits = np.load(workdir / "splits.npz")
    sizes = {k: len(splits[k]) for k in ("forget", "retain", "val", "test")}
    assert saved["data"] == {"name": "digits", "classes": [str(i) for i in range(10)], "splits": sizes}
    assert f"Data: digits, 10 classes; forget {sizes['forget']}, retain {sizes['retain']:,}," in report


def test_classes_without_a_val_or_test_example_are_warned_of(capsys):
    # A class missing from the held-out folder left its accuracy at 0 and its RF-JSD out, silently.
    from lotus_jax.data import make_splits
    from lotus_jax.data.sources import digits_dataset

    ds = digits_dataset()
    splits = make_splits(ds.train.labels, ds.heldout.labels, {"mode": "fraction", "sampling": "random",
                                                             "fraction": 0.1, "classes": [0]}, 0)
    labels = np.asarray(ds.heldout.labels)
    info = main.describe_data(ds, splits)
    assert "warning" not in capsys.readouterr().out and info["classes"][3] == "3"
    splits = dataclasses.replace(splits, val=splits.val[labels[splits.val] != 3])
    main.describe_data(ds, splits)
    out = capsys.readouterr().out
    assert "warning: 1 class(es) have no val example (3)" in out and "no test example" not in out


def test_rerun_skips_finished_stages_and_reproduces_metrics(finished_run, capsys):
    workdir, metrics = finished_run
    again = main.run(tiny_config(), workdir)
    out = capsys.readouterr().out
    assert "[original] checkpoint found" in out and "[lotus] checkpoint found: skipping" in out
    assert "(reused)" in out
    assert json.loads(json.dumps(again)) == json.loads(json.dumps(metrics))


def test_report_module_regenerates_report(finished_run):
    workdir, _ = finished_run
    before = (workdir / "report.md").read_text()
    (workdir / "report.md").unlink()
    r = subprocess.run([sys.executable, "-m", "lotus_jax.report", str(workdir)], capture_output=True, text=True)
    assert r.returncode == 0 and (workdir / "report.md").read_text() == before


def _main(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "lotus_jax.main", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


@pytest.mark.parametrize("override,message", [
    ("--config.methods=lotus,forgetful", "unknown method 'forgetful' in methods; valid: lotus,"),
    ("--config.stages=train,deploy", "unknown stage 'deploy' in stages; valid: train,"),
    ("--config.data.forget.fraction=1.5", "data.forget.fraction must be a number in (0, 1), got 1.5"),
    ("--config.data.source=folder", "data.source=folder needs --config.data.path"),
    ("--config.model.name=vgg", "unknown model.name 'vgg'; valid: resnet18, vit"),
])
def test_bad_input_is_one_line_and_keeps_the_workdir(finished_run, override, message, tmp_path):
    workdir, _ = finished_run
    before = {p: p.stat().st_mtime_ns for p in workdir.rglob("*") if p.is_file()}
    r = _main(f"--workdir={tmp_path / 'w'}", override)
    assert r.returncode == 1, r.stderr
    err = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(err) == 1 and message in err[0], r.stderr
    after = {p: p.stat().st_mtime_ns for p in workdir.rglob("*") if p.is_file()}
    assert before == after


def test_workdir_with_another_config_is_refused(finished_run):
    workdir, _ = finished_run
    r = _main(f"--workdir={workdir}", "--config.model.width=5")
    assert r.returncode == 1 and "different config" in r.stderr and "model" in r.stderr


@pytest.mark.parametrize("args,message", [
    (["--config.lotus.alhpa=3"], 'unknown config key \'alhpa\' Did you mean "alpha"'),
    (["--config.lotus.alpha=abc"], "could not convert string to float"),
    ([f"--config={ROOT / 'configs/cifar10.py'}:huge"], "unknown config variant 'huge'"),
    ([f"--config={ROOT / 'configs/default.py'}:nope"], "unknown config variant 'nope'"),
    (["--config=/nonexistent/config.py"], "config file /nonexistent/config.py does not exist (--config="),
    (["--bogus=1"], "Unknown command line flag 'bogus'"),
])
def test_bad_flags_and_config_files_are_one_line(args, message):
    r = _main(*args)
    err = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 1 and len(err) == 1 and message in err[0], r.stderr


def test_imagenet_without_prepared_dataset_fails_fast_with_instructions(tmp_path):
    # As the config's documented command: with the original model's checkpoint (never read: the data fails first).
    (tmp_path / "vit_b16_orbax").mkdir()
    (tmp_path / "vit_b16_orbax" / "_CHECKPOINT_METADATA").write_text("{}")
    r = _main(f"--config={ROOT / 'configs/imagenet.py'}", f"--workdir={tmp_path / 'w'}",
              f"--config.data.data_dir={tmp_path}", f"--config.original_checkpoint={tmp_path / 'vit_b16_orbax'}")
    err = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 1 and len(err) == 1, r.stderr
    assert "imagenet2012" in err[0] and "manual_dir" in err[0]


def test_a_failing_method_is_recorded_and_the_others_still_run(finished_run, tmp_path, register_method):
    import shutil
    import types

    import jax

    from lotus_jax.methods import lotus
    from lotus_jax.train.state import variables_of

    def broken(ctx, original, cfg, key):
        raise FloatingPointError("loss is nan at step 3")

    def diverged(ctx, original, cfg, key):
        plan = lotus.plan(ctx, original, cfg, key)
        plan.finish = lambda state: jax.tree.map(lambda x: x * float("nan"), variables_of(state))
        return plan

    register_method("broken", types.SimpleNamespace(default_config=lotus.default_config, plan=broken))
    register_method("diverged", types.SimpleNamespace(default_config=lotus.default_config, plan=diverged))
    workdir = tmp_path / "w"
    shutil.copytree(finished_run[0], workdir)
    ctx_cfg = tiny_config()
    with ctx_cfg.unlocked():
        ctx_cfg.methods = "broken,lotus,diverged"
        ctx_cfg.broken = ctx_cfg.lotus.copy_and_resolve_references()
        ctx_cfg.diverged = ctx_cfg.lotus.copy_and_resolve_references()
    metrics = main.run(ctx_cfg, workdir)
    assert metrics["models"]["broken"] == {"failed": "FloatingPointError: loss is nan at step 3"}
    assert "non-finite" in metrics["models"]["diverged"]["failed"]
    assert "avg_gap" in metrics["models"]["lotus"]
    assert "broken (failed: FloatingPointError" in (workdir / "report.md").read_text()


def test_training_can_start_from_a_checkpoint(finished_run, tmp_path, capsys):
    # Fine-tuning a pretrained backbone (train.init_checkpoint). Catches a stage that ignores the key and
    # starts from a random initialisation: an epoch at a negligible learning rate must give back the parameters
    # as given (BatchNorm running statistics do move in training mode).
    import numpy as np
    import orbax.checkpoint as ocp

    workdir, _ = finished_run
    c = tiny_config()
    c.stages = "train"
    c.train.epochs = 1
    c.train.optimizer.lr = 1e-12
    c.train.optimizer.weight_decay = 0.0
    c.train.init_checkpoint = str(workdir / "checkpoints" / "original")
    main.run(c, tmp_path)
    assert "training starts from" in capsys.readouterr().out
    read = ocp.StandardCheckpointer().restore
    given, trained = read(workdir / "checkpoints" / "original"), read(tmp_path / "checkpoints" / "original")
    for a, b in zip(jax.tree.leaves(given["params"]), jax.tree.leaves(trained["params"])):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


def test_original_checkpoint_path_can_name_the_seed(finished_run, tmp_path, capsys):
    # A `seeds` run starts each seed from its own checkpoint. Catches `{seed}` left in the path (restore fails)
    # or replaced by something other than the run's seed (the copy for another seed is imported).
    import shutil

    import numpy as np
    import orbax.checkpoint as ocp

    workdir, _ = finished_run
    c = tiny_config()
    c.stages = "train"
    shutil.copytree(workdir / "checkpoints" / "original", tmp_path / f"seed_{c.seed}")
    c.original_checkpoint = str(tmp_path / "seed_{seed}")
    main.run(c, tmp_path / "run")
    assert f"imported {tmp_path / f'seed_{c.seed}'}" in capsys.readouterr().out
    read = ocp.StandardCheckpointer().restore
    given, imported = read(workdir / "checkpoints" / "original"), read(tmp_path / "run" / "checkpoints" / "original")
    for a, b in zip(jax.tree.leaves(given), jax.tree.leaves(imported)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("stages", ["unlearn", "evaluate,audit"])
def test_no_original_to_start_from_is_refused_before_any_work(tmp_path, stages):
    # Without 'train', an original_checkpoint or one in the workdir, the run used to load the data, write
    # config.json and splits.npz and only then stop; now nothing is written.
    c = tiny_config()
    c.stages = stages
    with pytest.raises(main.ConfigError, match="no original model in .*: add 'train' to --config.stages"):
        main.run(c, tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("key", ["original_checkpoint", "gold_checkpoint", "train.init_checkpoint"])
def test_a_checkpoint_that_is_not_there_is_refused_before_any_work(tmp_path, key):
    # A mistyped path was found after the data was loaded and config.json written, which then refused the
    # corrected path ("a different config"): the workdir was lost to one typo. Now nothing is written.
    c = tiny_config()
    section, _, name = key.rpartition(".")
    (c[section] if section else c)[name] = str(tmp_path / "nope")
    with pytest.raises(main.ConfigError, match=f"--config.{key}: no orbax checkpoint at .*nope "):
        main.run(c, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_only_the_checkpoints_the_run_reads_are_checked(finished_run, tmp_path):
    # train.init_checkpoint is read only when the original is trained, not when it is imported or found.
    workdir, _ = finished_run
    c = tiny_config()
    c.train.init_checkpoint = str(tmp_path / "nope")
    c.original_checkpoint = str(workdir / "checkpoints" / "original")
    main.check_checkpoints(tmp_path / "run", c, ["train"])
    c.original_checkpoint = None
    main.check_checkpoints(workdir, c, ["train"])  # the workdir holds its original
    with pytest.raises(main.ConfigError, match="--config.train.init_checkpoint: no orbax checkpoint at .*nope "):
        main.check_checkpoints(tmp_path / "run", c, ["train"])


def test_images_that_cannot_be_decoded_are_refused_before_any_work(tmp_path):
    # An image folder is decoded at load, so its damaged files are known then; they stopped the run only when
    # first read, after the original and gold models had trained. Now all of them are named up front.
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("test", 3)):
        for cls in ("a", "b"):
            (tmp_path / "data" / split / cls).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(
                    tmp_path / "data" / split / cls / f"{i}.png")
    for bad in ("train/a/bad.png", "test/b/bad.png"):
        (tmp_path / "data" / bad).write_bytes(b"not an image")
    c = tiny_config()
    c.data.source, c.data.path = "folder", str(tmp_path / "data")
    with pytest.raises(main.ConfigError, match=r"^2 image\(s\) cannot be decoded: train/a/bad\.png \(.*\), "
                                               r"test/b/bad\.png .*skip_corrupt=True"):
        main.run(c, tmp_path / "run")
    assert not (tmp_path / "run").exists()
    c.data.skip_corrupt, c.stages, c.train.epochs = True, "train", 1  # left out instead: the run goes on
    main.run(c, tmp_path / "run")
    assert (tmp_path / "run" / "checkpoints" / "original").exists()


def test_a_seeds_run_checks_every_seeds_checkpoint_before_the_first_seed(finished_run, tmp_path):
    # The checkpoint of seed 1 is missing: found before seed 0 runs, not after it.
    import shutil

    workdir, _ = finished_run
    c = tiny_config()
    shutil.copytree(workdir / "checkpoints" / "original", tmp_path / f"seed_{c.seed}")
    c.original_checkpoint = str(tmp_path / "seed_{seed}")
    c.seeds = f"{c.seed},{c.seed + 1}"
    with pytest.raises(main.ConfigError, match=f"no orbax checkpoint at .*seed_{c.seed + 1} "):
        main.run_seeds(c, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_workdir_refuses_another_original_or_gold_checkpoint(tmp_path):
    # The workdir's checkpoints/original would be used as is ("checkpoint found"), silently ignoring the newly
    # given model and reusing every stage and audit population built on the old one.
    c = tiny_config()
    main.save_config(tmp_path, c)
    (tmp_path / "splits.npz").write_bytes(b"")
    main.check_workdir(tmp_path, c)
    for key in ("original_checkpoint", "gold_checkpoint"):
        changed = tiny_config()
        changed[key] = "/elsewhere/model"
        with pytest.raises(main.ConfigError, match=f"section\\(s\\) {key} differ"):
            main.check_workdir(tmp_path, changed)


def test_workdir_of_an_older_version_without_a_new_unset_key_is_accepted(tmp_path):
    # A key added to the config later (saved config lacks it) must not orphan existing runs while it is unset;
    # catches both a comparison that refuses such workdirs and one that ignores real differences.
    c = tiny_config()
    saved = json.loads(c.to_json_best_effort())
    del saved["train"]["init_checkpoint"]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    (tmp_path / "splits.npz").write_bytes(b"")
    main.check_workdir(tmp_path, c)
    c.train.init_checkpoint = "/elsewhere"
    with pytest.raises(main.ConfigError, match="train"):
        main.check_workdir(tmp_path, c)
    c = tiny_config()
    c.train.epochs += 1
    with pytest.raises(main.ConfigError, match="train"):
        main.check_workdir(tmp_path, c)
