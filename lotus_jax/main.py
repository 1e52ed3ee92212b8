"""Entry point: wires data -> models -> methods -> metrics -> report, stage by stage.

    python -m lotus_jax.main --config configs/default.py --workdir runs/default [--config.key=value ...]

Stages (`--config.stages`): `train` (original model on D_f ∪ D_r), `retrain` (gold model on D_r), `unlearn`
(each of `--config.methods` from the original model), `evaluate` (metrics.json and report.md), and `audit`
(populations of gold and unlearned models, per-example scores; not in the default list). A stage whose
checkpoint is already in the workdir is skipped, so a rerun continues.
"""

from __future__ import annotations

import dataclasses
import json
import re
import signal
import sys
import threading
import zlib
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging
from etils import epath
from ml_collections import config_flags

from lotus_jax import audit, checkpoint, config, evaluate, files, report
from lotus_jax.data import Dataset, load_dataset, load_or_make_splits, preprocess_from_config, split_settings
from lotus_jax.data.cache import cache_training_examples
from lotus_jax.data.pipeline import check_batch_size
from lotus_jax.data.sources import available_cores, describe
from lotus_jax.errors import ConfigError, failure_reason
from lotus_jax.evaluate import make_eval_fn
from lotus_jax.methods import unlearn as unlearn_method
from lotus_jax.methods.supervised import train
from lotus_jax.models import build_model, init_function
from lotus_jax.sharding import initialize_distributed, mesh_from_config
from lotus_jax.train.context import Context
from lotus_jax.train.runner import Interrupted, NonFiniteError
from lotus_jax.train.state import all_finite

DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "default.py"  # inside the package
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# Config sections whose change invalidates what a workdir already holds, and data keys that do not.
# An original or gold model found in the workdir is used as is, so a different checkpoint given later must refuse.
RUN_DEFINING = ("seed", "data", "model", "dtype", "train", "retrain", "original_checkpoint", "gold_checkpoint")
MOVABLE_DATA_KEYS = ("path", "data_dir", "decode_workers", "label_cache", "skip_corrupt", "unlearn_augment",
                     "cache_unlearning")


def log(msg: str) -> None:
    if jax.process_index() == 0:
        print(msg, flush=True)


def validate(cfg) -> tuple[list[str], list[str]]:
    """Checks every config key before any work starts (`lotus_jax.config.validate`); returns (stages, methods)."""
    config.validate(cfg)
    return config.split_names(cfg.stages), config.split_names(cfg.methods)


def check_workdir(workdir: epath.Path, cfg) -> None:
    """Refuses a workdir whose splits/checkpoints were made with a different data/model/training config.

    Where the data lives (`data.path`, `data.data_dir`) and how it is decoded may change between runs. A key
    the saved config lacks (written by an older version) counts as equal when its current value is unset (None).
    """
    path = workdir / "config.json"
    if not path.exists() or not ((workdir / "splits.npz").exists() or (workdir / "checkpoints").exists()):
        return
    saved, current = json.loads(path.read_text()), json.loads(cfg.to_json_best_effort())
    for c in (saved, current):
        for movable in MOVABLE_DATA_KEYS:
            c.get("data", {}).pop(movable, None)
    diff = [k for k in RUN_DEFINING if _without_unset(saved.get(k), current.get(k)) != current.get(k)]
    if diff:
        raise ConfigError(f"{workdir} holds a run made with a different config (section(s) {', '.join(diff)} "
                          f"differ); use a new --workdir")


def check_original(workdir: epath.Path, cfg, stages: list[str]) -> None:
    """Refuses, before any work, unlearning or auditing with no original model to start from: none trained by
    these stages, given as a checkpoint, or found in the workdir."""
    if not {"unlearn", "audit"} & set(stages) or "train" in stages or cfg.original_checkpoint:
        return
    if not checkpoint.exists(workdir / "checkpoints" / "original"):
        raise _no_original(workdir / "checkpoints")


MODELS_FROM = {"original": ("original_checkpoint", "train"), "gold": ("gold_checkpoint", "retrain")}


def checkpoint_to_read(workdir: epath.Path, cfg, model: str) -> tuple[str, str] | None:
    """(config key, path) of the checkpoint outside the workdir that obtaining `model` ('original' or 'gold')
    reads: the one given for it ({seed} replaced), else its stage's `init_checkpoint`; None when the workdir
    holds the model or nothing is given."""
    if checkpoint.exists(workdir / "checkpoints" / model):
        return None
    given, stage = MODELS_FROM[model]
    if cfg[given]:
        return given, seeded_path(cfg[given], cfg.seed)
    start = cfg[stage].get("init_checkpoint")
    return (f"{stage}.init_checkpoint", start) if start else None


def check_checkpoints(workdir: epath.Path, cfg, stages: list[str]) -> None:
    """Refuses, before any work, a checkpoint the run would read that is not there (a mistyped path would
    otherwise be found after the data is loaded and the run's config is written)."""
    for model, (given, stage) in MODELS_FROM.items():
        source = checkpoint_to_read(workdir, cfg, model)
        if source is None or (source[0] != given and stage not in stages):  # an init_checkpoint of no training
            continue
        key, path = source
        if not checkpoint.exists(path):
            raise ConfigError(f"--config.{key}: no orbax checkpoint at {path} (no _CHECKPOINT_METADATA); give the "
                              f"directory of one saved by lotus_jax or made by `python -m lotus_jax.convert`")


def describe_data(dataset: Dataset, splits: Any) -> dict[str, Any]:
    """The data section of metrics.json (name, class names by index, split sizes); logs the class names and
    warns of classes with no val or test example (their held-out accuracy and RF-JSD are not measured)."""
    names = list(getattr(dataset.train, "class_names", None) or map(str, range(dataset.num_classes)))
    if names != [str(i) for i in range(len(names))]:  # named classes (folders): which index is which
        log("classes: " + ", ".join(f"{i} {n}" for i, n in enumerate(names[:20])) + (", ..." if len(names) > 20
                                                                                     else ""))
    labels = np.asarray(dataset.heldout.labels)
    for split in ("val", "test"):
        missing = sorted(set(range(dataset.num_classes)) - set(labels[getattr(splits, split)].tolist()))
        if missing:
            log(f"warning: {len(missing)} class(es) have no {split} example ({', '.join(names[i] for i in missing[:10])}"
                f"{', ...' if len(missing) > 10 else ''}): their {split} accuracy and RF-JSD are not measured")
    return {"name": dataset.name, "classes": names, "splits": splits.sizes()}


def check_decodable(dataset: Dataset) -> None:
    """Refuses, before any training, images that a source decoded at load and found damaged (image folders);
    sources that decode lazily (tfds, array-record) report theirs when read."""
    bad = [(describe(source, i), why) for source in (dataset.train, dataset.heldout)
           for i, why in sorted(getattr(source, "damaged", {}).items())]
    if bad:
        listed = ", ".join(f"{name} ({why})" for name, why in bad[:3]) + (", ..." if len(bad) > 3 else "")
        raise ConfigError(f"{len(bad)} image(s) cannot be decoded: {listed}; remove or replace them, or set "
                          f"--config.data.skip_corrupt=True to leave them out")


def _no_original(ckdir: epath.Path) -> ConfigError:
    return ConfigError(f"no original model in {ckdir}: add 'train' to --config.stages or pass "
                       f"--config.original_checkpoint=<orbax checkpoint>")


def _without_unset(saved: Any, current: Any) -> Any:
    """`saved` with the keys it lacks but `current` holds as None (unset) added as None, recursively."""
    if not isinstance(saved, dict) or not isinstance(current, dict):
        return saved
    out = {k: _without_unset(v, current.get(k)) for k, v in saved.items()}
    out.update({k: None for k, v in current.items() if k not in saved and v is None})
    return out


def save_config(workdir: epath.Path, cfg) -> None:
    files.write_json(workdir / "config.json", json.loads(cfg.to_json_best_effort()), sort_keys=True)


def run(cfg, workdir: epath.Path, stop: threading.Event | None = None) -> dict[str, Any]:
    """Runs the configured stages in `workdir`; returns the metrics (when evaluated).

    Every training/unlearning stage writes epoch checkpoints (`cfg.checkpoint_every_s`) under `workdir/progress/`
    (and when `stop` is set, after the current step), so rerunning the same command continues exactly.
    """
    workdir = epath.Path(workdir)
    stages, methods = validate(cfg)
    check_workdir(workdir, cfg)
    check_original(workdir, cfg, stages)
    check_checkpoints(workdir, cfg, stages)
    if "audit" in stages:
        audit.check_split(cfg.audit)
    dataset = load_dataset(cfg.data)
    if not cfg.data.get("skip_corrupt", False):
        check_decodable(dataset)
    workdir.mkdir(parents=True, exist_ok=True)
    save_config(workdir, cfg)
    splits, reused = load_or_make_splits(workdir / "splits.npz", dataset.train.labels, dataset.heldout.labels,
                                         split_settings(cfg.data, cfg.seed), cfg.seed)
    log(f"data: {dataset.name}, {dataset.num_classes} classes, images {dataset.train.image_shape}; splits "
        f"{splits.sizes()}{' (reused)' if reused else ''}")
    data_info = describe_data(dataset, splits)
    mesh = mesh_from_config(cfg.mesh)
    for name in ("train", "retrain", "eval", *methods):
        if cfg[name].get("batch_size") is not None:
            check_batch_size(cfg[name].batch_size, mesh)
    try:
        model = build_model(cfg.model, dataset.num_classes, DTYPES[cfg.dtype])
    except ValueError as e:  # e.g. an unknown ViT variant
        raise ConfigError(str(e)) from None
    prep = preprocess_from_config(cfg.data, cfg.model)
    # The model's input: shape and dtype of one preprocessed image (traced, not computed).
    spec = jax.eval_shape(prep, jax.ShapeDtypeStruct((1, *dataset.train.image_shape), jnp.uint8))
    dummy = np.zeros(spec.shape, spec.dtype)
    init = init_function(model, dummy)
    ctx = Context(model=model, prep=prep, dataset=dataset, splits=splits, mesh=mesh,
                  eval_fn=make_eval_fn(model, prep, dataset.num_classes), init_fn=init,
                  eval_batch_size=cfg.eval.batch_size, seed=cfg.seed, log=log, progress_dir=workdir / "progress",
                  checkpoint_every_s=float(cfg.checkpoint_every_s),
                  stop=stop or threading.Event(), skip_corrupt=bool(cfg.data.get("skip_corrupt", False)),
                  data_threads=int(cfg.data.get("decode_workers", -1)),
                  unlearn_augment=bool(cfg.data.get("unlearn_augment", False)))
    key = jax.random.key(cfg.seed)
    like = jax.eval_shape(init, key)  # the variables' shapes and dtypes
    log(f"model: {cfg.model.name}, {sum(x.size for x in jax.tree.leaves(like['params'])):,} "
        f"parameters, input {dummy.shape[1:]}, {cfg.dtype}; mesh {dict(mesh.shape)}")
    ckdir = workdir / "checkpoints"

    def obtain(name: str, indices: np.ndarray, tcfg, stage_key) -> None:
        """The model `name` in ckdir: already there, imported from its given checkpoint, or trained on
        `indices` (from the stage's init_checkpoint when set: fine-tuning a pretrained backbone)."""
        path = ckdir / name
        if checkpoint.exists(path):
            log(f"[{name}] checkpoint found in {path}: skipping training")
            return
        source = checkpoint_to_read(workdir, cfg, name)
        if source and source[0] == MODELS_FROM[name][0]:
            variables = checkpoint.restore(source[1], like, mesh)
            log(f"[{name}] imported {source[1]}")
        else:
            initial = checkpoint.restore(source[1], like, mesh) if source else ctx.init_variables(stage_key)
            if source:
                log(f"[{name}] training starts from {source[1]}")
            variables = train(ctx, initial, indices, tcfg, stage_key, name)
        checkpoint.save(path, variables)
        (workdir / "progress" / name).rmtree(missing_ok=True)

    def load(name: str) -> dict | None:
        path = ckdir / name
        return checkpoint.restore(path, like, mesh) if checkpoint.exists(path) else None

    if "train" in stages or cfg.original_checkpoint:
        obtain("original", np.sort(np.concatenate([splits.forget, splits.retain])), cfg.train,
               jax.random.fold_in(key, 1))
    if "retrain" in stages or cfg.gold_checkpoint:
        obtain("gold", splits.retain, cfg.retrain, jax.random.fold_in(key, 2))
    results_dir = workdir / "results"
    if cfg.data.get("cache_unlearning", True) and {"unlearn", "evaluate", "audit"} & set(stages):
        ctx = dataclasses.replace(ctx, dataset=cache_unlearning_examples(ctx, cfg, workdir))
    # Trained, imported or found above (check_original); read once for the unlearning and the audit stages.
    needs_original = bool({"unlearn", "audit"} & set(stages))
    original = load("original") if needs_original else None
    if needs_original and original is None:
        raise _no_original(ckdir)
    if "unlearn" in stages:
        results_dir.mkdir(exist_ok=True)
        for name in methods:
            settings = config.method_settings(cfg, name)
            done = results_dir / f"{name}.json"
            if checkpoint.exists(ckdir / name) and done.exists():
                if json.loads(done.read_text()).get("settings") == settings:
                    log(f"[{name}] checkpoint found: skipping")
                    continue
                log(f"[{name}] its settings changed since it ran: running it again")
            # The key depends on the method's name only, not on its place in --config.methods.
            method_key = jax.random.fold_in(key, zlib.crc32(name.encode()) & 0x7FFFFFFF)
            record = run_method(ctx, name, original, cfg[name], method_key, ckdir / name)
            record["settings"] = settings
            files.write_json(results_dir / f"{name}.json", record)
            if not record.get("failed"):  # a failed method keeps its last good epoch checkpoint
                (workdir / "progress" / name).rmtree(missing_ok=True)
    metrics: dict[str, Any] = {}
    if "evaluate" in stages:
        metrics = evaluate_all(ctx, workdir, methods, load, cfg, keep_audit="audit" not in stages, data=data_info)
    if "audit" in stages:
        metrics = metrics or (files.read_json(workdir / "metrics.json") if (workdir / "metrics.json").exists()
                              else {})
        metrics["audit"] = audit.run_audit(ctx, cfg, workdir, original, jax.random.fold_in(key, 3),
                                           config.split_names(cfg.audit.methods))
        write_metrics(workdir, metrics)
    try:
        (workdir / "progress").rmdir()  # only when every stage finished and removed its epoch checkpoints
    except (OSError, ValueError):  # not empty (a failed method keeps its last good epoch), or absent
        pass
    return metrics


def cache_unlearning_examples(ctx: Context, cfg, workdir: epath.Path) -> Dataset:
    """The dataset with D_f and D_r (all that unlearning, evaluation and the audit read from the training source)
    decoded once into `<workdir>/cache/train.npy` when the training source decodes on demand (tfds); reused by
    every method and by a resumed run. A workdir that is not a local folder (a bucket) keeps them in memory."""
    local = "://" not in str(workdir)
    data = {k: v for k, v in json.loads(cfg.data.to_json_best_effort()).items() if k not in MOVABLE_DATA_KEYS}
    workers = ctx.data_threads if ctx.data_threads > 0 else available_cores()
    return cache_training_examples(ctx.dataset, np.concatenate([ctx.splits.forget, ctx.splits.retain]),
                                   directory=Path(str(workdir)) / "cache" if local else None, workers=workers,
                                   fingerprint=json.dumps(data, sort_keys=True), log=log)


def seeded_path(path: str, seed: int) -> str:
    """`path` with `{seed}` replaced by the run's seed: one checkpoint per seed in a `seeds` run."""
    return str(path).replace("{seed}", str(seed))


def run_method(ctx: Context, name: str, original: dict, mcfg, key: jax.Array, ckpt: epath.Path) -> dict[str, Any]:
    """Runs one method and saves its checkpoint; a method that raises or ends with non-finite parameters
    is recorded as failed with its reason, so the other methods still run and are reported."""
    try:
        result = unlearn_method(ctx, name, original, mcfg, key)
    except (ConfigError, Interrupted):
        raise
    except Exception as e:  # a failing method (NaN loss, say) must not take the comparison down with it
        reason = failure_reason(e)
        log(f"[{name}] failed: {reason}")
        return {"failed": reason}
    record = {"time_s": result.time_s, "history": result.history, **result.extra}
    if not bool(all_finite(result.variables)):
        record["failed"] = "non-finite parameters after unlearning (diverged)"
        log(f"[{name}] failed: {record['failed']}")
        return record
    checkpoint.save(ckpt, result.variables)
    log(f"[{name}] done in {result.time_s:.1f}s")
    return record


def previous_audit(workdir: epath.Path, cfg) -> dict[str, Any] | None:
    """The audit section of the workdir's metrics.json when it still describes this config (the same
    `audit.models`, `audit.originals` and `audit.methods`, and `audit.section_settings`), so that a rerun
    without the audit stage keeps it."""
    path = workdir / "metrics.json"
    old = files.read_json(path).get("audit") if path.exists() else None
    if not old:
        return None
    methods = config.split_names(cfg.audit.methods)
    if "settings" not in old:
        why = "was made by an older version"
    elif (old.get("models") != cfg.audit.models or old.get("originals") != cfg.audit.originals
          or old["settings"] != json.loads(json.dumps(audit.section_settings(cfg, methods)))):  # methods' names too
        why = "was made with other audit, method or evaluation settings"
    else:
        return old
    log(f"[evaluate] the audit in {path} {why}: left out of the new report; add 'audit' to --config.stages to "
        f"redo it")
    return None


def evaluate_all(ctx: Context, workdir: epath.Path, methods: list[str], load, cfg,
                 keep_audit: bool = False, data: dict[str, Any] | None = None) -> dict[str, Any]:
    """Statistics of every available model, then metrics.json and report.md (with `keep_audit`, the
    workdir's audit section too, when it still describes this config)."""
    stats_dir = workdir / "stats"
    stats_dir.mkdir(exist_ok=True)
    all_stats, times, failed = {}, {}, {}
    for name in ["original", "gold", *methods]:
        record_path = workdir / "results" / f"{name}.json"
        record = json.loads(record_path.read_text()) if record_path.exists() else {}
        if record.get("failed"):
            failed[name] = record["failed"]
            continue
        variables = load(name)
        if variables is None:
            if name == "original":
                raise ConfigError(f"no original model in {workdir / 'checkpoints'}: nothing to evaluate")
            continue
        log(f"[evaluate] {name}")
        all_stats[name] = evaluate.split_statistics(ctx, variables)
        evaluate.save_statistics(stats_dir / f"{name}.npz", all_stats[name])
        if "time_s" in record:
            times[name] = record["time_s"]
    metrics = evaluate.summarize(all_stats, times, form=cfg.eval.jsd_form, rf_unseen=cfg.eval.rf_jsd_unseen,
                                 compat=cfg.compat, seed=cfg.seed)
    for name, reason in failed.items():
        metrics["models"][name] = {"failed": reason}
    if data:
        metrics["data"] = data
    kept = previous_audit(workdir, cfg) if keep_audit else None
    if kept:
        metrics["audit"] = kept
    write_metrics(workdir, metrics)
    return metrics


def write_metrics(workdir: epath.Path, metrics: dict[str, Any]) -> None:
    """metrics.json (atomically), then report.md and figures; prints the table. Process 0 only."""
    if not files.writes():
        return
    files.write_json(workdir / "metrics.json", metrics)
    report.write(workdir)
    if metrics.get("models"):
        log("\n" + report.table(metrics) + "\n")
    if metrics.get("audit"):
        log("\n" + report.audit_table(metrics["audit"]) + "\n")
    log(f"wrote {workdir / 'metrics.json'} and {workdir / 'report.md'}")


def install_stop_handlers(stop: threading.Event) -> None:
    """SIGINT (Ctrl-C) and SIGTERM ask the running stage to finish its step, checkpoint and exit; a second
    signal stops at once."""

    def handler(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        log(f"\n{signal.Signals(signum).name}: finishing the current step and writing a checkpoint "
            f"(send it again to stop at once)")
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, handler)


def run_seeds(cfg, workdir: epath.Path, stop: threading.Event | None = None) -> dict[str, Any]:
    """The whole comparison once per seed of `cfg.seeds` (in `workdir/seed_<s>`), then mean ± std."""
    try:
        seeds = [int(s) for s in str(cfg.seeds).split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"seeds must be comma-separated integers, got {cfg.seeds!r}") from None
    stages, _ = validate(cfg)
    workdir = epath.Path(workdir)
    configs = {}
    for s in seeds:
        c = configs[s] = cfg.copy_and_resolve_references()
        c.seed, c.seeds = s, ""
        check_checkpoints(workdir / f"seed_{s}", c, stages)  # every seed's checkpoints before the first seed runs
    per_seed = {}
    for s, c in configs.items():
        log(f"=== seed {s} ===")
        per_seed[s] = run(c, workdir / f"seed_{s}", stop)
    if not all(per_seed.values()):
        return {}
    metrics = evaluate.aggregate(per_seed)
    if any(m.get("audit") for m in per_seed.values()) and "audit" not in metrics:
        log("[seeds] not every seed has an audit: the summary leaves the audit out (see each seed's report)")
    write_metrics(workdir, metrics)
    return metrics


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    logging.set_verbosity(logging.ERROR)  # orbax and tfds log routine events; ours are printed
    try:
        cfg = flags.FLAGS.config  # the config file is read and the overrides applied here
        cfg.get("seed")  # a config that failed to load is a proxy that raises on first use
    except FLAG_ERRORS as e:
        flag_error_exit(e)
    initialize_distributed(cfg.distributed)  # before anything touches a device
    workdir = epath.Path(flags.FLAGS.workdir or Path("runs") / Path(config_flags.get_config_filename(flags.FLAGS["config"])
                                                                   ).stem.split(":")[0])
    stop = threading.Event()
    install_stop_handlers(stop)
    try:
        if cfg.seeds:
            run_seeds(cfg, workdir, stop)
        else:
            run(cfg, workdir, stop)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except NonFiniteError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except Interrupted as e:
        print(f"interrupted: {e}. Run the same command again to resume.", file=sys.stderr)
        sys.exit(130)


FLAG_ERRORS = (flags.Error, AttributeError, KeyError, OSError, ValueError, TypeError)


def flag_error_exit(e: BaseException) -> None:
    """A bad flag, config file or config key as one line on stderr, exit code 1."""
    text = str(e)
    missing = re.search(r"No such file or directory: '([^']*)'", text)
    if isinstance(e, OSError) and "config file" in text and missing:  # ml_collections: --config names no file
        text = f"config file {missing.group(1)} does not exist (--config=<path to a configs/*.py file>[:variant])"
    if isinstance(e, (AttributeError, KeyError)):  # ml_collections: an unknown key, with a suggestion
        text = "unknown config key " + text.strip("'\"").replace("\\n", " ").replace("\\'", "'")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    print(f"error: {lines[-1] if lines else type(e).__name__}", file=sys.stderr)
    sys.exit(1)


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with `flag_error_exit` for what it rejects."""
    try:
        return flags.FLAGS(argv)
    except FLAG_ERRORS as e:
        flag_error_exit(e)
        raise


def define_flags() -> None:
    """--config (a configs/*.py file, with --config.key=value overrides) and --workdir.

    Defined when run as a program, not on import; ml_collections applies the overrides already here.
    """
    try:
        config_flags.DEFINE_config_file("config", str(DEFAULT_CONFIG), "Config file (configs/*.py).",
                                        lock_config=True)
        flags.DEFINE_string("workdir", None, "Output folder (default: runs/<config name>).")
    except FLAG_ERRORS as e:
        flag_error_exit(e)


if __name__ == "__main__":
    define_flags()
    app.run(main, flags_parser=parse_flags)
