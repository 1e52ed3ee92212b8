"""The config schema: every key of `base_config()` has a rule, each family of rules refuses an out-of-range
value with one line naming the key, the value and what is valid, the cross-key checks hold, every shipped
config validates, and the command line refuses a bad value before touching the workdir."""

from __future__ import annotations

import importlib.util
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import ml_collections as mlc
import pytest

import lotus_jax
from lotus_jax import config
from lotus_jax.configs.default import get_config as default_config
from lotus_jax.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
CONFIG_FILES = sorted(p for p in (ROOT / "configs").glob("*.py") if p.name != "__init__.py")
METHODS = "lotus, finetune, neggrad_plus, random_labels, bad_teacher, scrub, ssd, unsir, salun"


def _untyped(cfg: mlc.ConfigDict) -> mlc.ConfigDict:
    """A copy that accepts values of any type (ml_collections refuses e.g. a str for a bool key on its own)."""
    return mlc.ConfigDict(cfg.to_dict(), type_safe=False)


def _error(**overrides: Any) -> str | None:
    """The message `validate` raises for the default config with `overrides` (keys with `__` for `.`)."""
    cfg = _untyped(default_config())
    for key, value in overrides.items():
        *path, leaf = key.split("__")
        section = cfg
        for part in path:
            section = section[part]
        section[leaf] = value
    try:
        config.validate(cfg)
    except ConfigError as e:
        assert "\n" not in str(e)
        return str(e)
    return None


def _check(overrides: dict[str, Any], message: str) -> None:
    assert _error(**overrides) == message


# -- completeness ----------------------------------------------------------------------------------------

def test_every_leaf_key_has_a_rule():
    missing = sorted(set(config.leaves(config.base_config())) - set(config.SCHEMA))
    assert not missing, f"add a rule to lotus_jax/config.py SCHEMA for {missing}"


def test_every_rule_and_cross_check_names_an_existing_key():
    keys = set(config.leaves(config.base_config()))
    assert not sorted(set(config.SCHEMA) - keys)
    assert not sorted({k for cross in config.CROSS_CHECKS for k in cross.keys} - keys)


def _shipped_configs() -> list[tuple[str, mlc.ConfigDict]]:
    out = [("lotus_jax/configs/default.py", default_config()), ("base_config()", config.base_config())]
    for path in CONFIG_FILES:
        spec = importlib.util.spec_from_file_location(f"_config_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        out += [(f"{path.name}{v and ':' + v}", module.get_config(v)) for v in ("", "small")]
    return out


def test_defaults_and_every_shipped_config_and_variant_validate():
    names = [name for name, _ in _shipped_configs()]
    assert {"cifar10.py:small", "imagenet.py:small", "cifar100.py", "default.py"} <= set(names)
    for name, cfg in _shipped_configs():
        try:
            config.validate(cfg)
        except ConfigError as e:
            pytest.fail(f"{name}: {e}")


def test_names_come_from_the_registries():
    from lotus_jax import methods, models

    assert config.base_config().methods == ",".join(methods.REGISTRY.names())
    assert models.MODEL_NAMES == models.REGISTRY.names()
    assert _error(model__name="tiny") == "unknown model.name 'tiny'; valid: resnet18, vit"
    models.REGISTRY.register("tiny", lambda model_cfg, num_classes, dtype: None)
    try:
        assert _error(model__name="tiny") is None
    finally:
        models.REGISTRY.unregister("tiny")


def test_declared_small_conv_size_reaches_the_model():
    import jax.numpy as jnp

    from lotus_jax.models import build_model

    cfg = default_config()
    assert cfg.model.small_conv_size == 2 and cfg.data.skip_corrupt is False
    cfg.model.small_conv_size = 0
    assert build_model(cfg.model, 10, jnp.float32).small_conv_size == 0


# -- one family of keys per test -------------------------------------------------------------------------

@pytest.mark.parametrize("overrides,message", [
    ({"train__epochs": -3}, "train.epochs must be an integer >= 1, got -3"),
    ({"lotus__epochs": 0}, "lotus.epochs must be an integer >= 1, got 0"),
    ({"unsir__batch_size": 0}, "unsir.batch_size must be an integer >= 1, got 0"),
    ({"audit__models": 4}, "audit.models must be an integer >= 6, got 4"),
    ({"eval__batch_size": 2.5}, "eval.batch_size must be an integer >= 1, got 2.5"),
    ({"retrain__epochs": True}, "retrain.epochs must be an integer >= 1, got True"),
    ({"model__width": 0}, "model.width must be an integer >= 1, got 0"),
    ({"model__small_conv_size": -1}, "model.small_conv_size must be an integer >= 0, got -1"),
    ({"scrub__msteps": -1}, "scrub.msteps must be an integer >= 0, got -1"),
    ({"unsir__noise_steps": 0}, "unsir.noise_steps must be an integer >= 1, got 0"),
    ({"unsir__retain_per_class": 0}, "unsir.retain_per_class must be None or an integer >= 1, got 0"),
    ({"data__train_per_class": -5}, "data.train_per_class must be None or an integer >= 1, got -5"),
    ({"data__forget__per_class": 0}, "data.forget.per_class must be an integer >= 1, got 0"),
    ({"data__decode_workers": 0}, "data.decode_workers must be -1 or an integer >= 1, got 0"),
    ({"mesh__fsdp": -2}, "mesh.fsdp must be -1 or an integer >= 1, got -2"),
    ({"train__optimizer__epochs": 0}, "train.optimizer.epochs must be an integer >= 1, got 0"),
    ({"seed": -1}, f"seed must be an integer in [0, {2**63 - 1}], got -1"),
    ({"seeds": "3407,-1"}, f"seeds must be comma-separated distinct integers in [0, {2**63 - 1}] (or empty), "
                           "got '3407,-1'"),
    ({"seeds": "1,1"}, f"seeds must be comma-separated distinct integers in [0, {2**63 - 1}] (or empty), got '1,1'"),
    ({"data__channels": 2}, "data.channels must be None, 1 or 3, got 2"),
    ({"data__forget__classes": [1, -2]}, "data.forget.classes must be a class id >= 0 or a non-empty list of them, "
                                         "got [1, -2]"),
])
def test_counts_and_sizes(overrides, message):
    _check(overrides, message)


@pytest.mark.parametrize("overrides,message", [
    ({"data__forget__fraction": 1.0}, "data.forget.fraction must be a number in (0, 1), got 1.0"),
    ({"data__forget__fraction": -0.5}, "data.forget.fraction must be a number in (0, 1), got -0.5"),
    ({"data__val_fraction": 0.0}, "data.val_fraction must be a number in (0, 1), got 0.0"),
    ({"lotus__retain_fraction": 0.0}, "lotus.retain_fraction must be a number in (0, 1], got 0.0"),
    ({"bad_teacher__retain_fraction": 1.5}, "bad_teacher.retain_fraction must be a number in (0, 1], got 1.5"),
    ({"salun__mask_fraction": -0.1}, "salun.mask_fraction must be a number in (0, 1], got -0.1"),
    ({"neggrad_plus__beta": 1.01}, "neggrad_plus.beta must be a number in [0, 1], got 1.01"),
    ({"finetune__optimizer__momentum": 1.0}, "finetune.optimizer.momentum must be a number in [0, 1), got 1.0"),
])
def test_fractions(overrides, message):
    _check(overrides, message)


@pytest.mark.parametrize("overrides,message", [
    ({"lotus__alpha": math.nan}, "lotus.alpha must be a finite number, got nan"),
    ({"lotus__stop_threshold": math.inf}, "lotus.stop_threshold must be None or a finite number, got inf"),
    ({"train__optimizer__lr": 0.0}, "train.optimizer.lr must be a finite number > 0, got 0.0"),
    ({"scrub__optimizer__lr": math.inf}, "scrub.optimizer.lr must be a finite number > 0, got inf"),
    ({"salun__optimizer__weight_decay": -1e-4}, "salun.optimizer.weight_decay must be a finite number >= 0, "
                                                "got -0.0001"),
    ({"retrain__optimizer__warmup_epochs": -1}, "retrain.optimizer.warmup_epochs must be a finite number >= 0, "
                                                "got -1"),
    ({"scrub__kd_temperature": 0.0}, "scrub.kd_temperature must be a finite number > 0, got 0.0"),
    ({"bad_teacher__temperature": -1.0}, "bad_teacher.temperature must be a finite number > 0, got -1.0"),
    ({"scrub__gamma": -0.5}, "scrub.gamma must be a finite number >= 0, got -0.5"),
    ({"ssd__lam": 0.0}, "ssd.lam must be a finite number > 0, got 0.0"),
    ({"unsir__noise_lr": math.nan}, "unsir.noise_lr must be a finite number > 0, got nan"),
    ({"model__layernorm_epsilon": 0.0}, "model.layernorm_epsilon must be None or a finite number > 0, got 0.0"),
    ({"data__mean": (0.5, math.nan)}, "data.mean must be a non-empty tuple of finite numbers, got (0.5, nan)"),
    ({"data__std": (0.5, 0.0)}, "data.std must be a non-empty tuple of finite numbers > 0, got (0.5, 0.0)"),
    ({"data__std": ()}, "data.std must be a non-empty tuple of finite numbers > 0, got ()"),
])
def test_rates_weights_and_real_numbers(overrides, message):
    _check(overrides, message)


@pytest.mark.parametrize("overrides,message", [
    ({"model__name": "resnet50"}, "unknown model.name 'resnet50'; valid: resnet18, vit"),
    ({"data__source": "s3"}, "unknown data.source 's3'; valid: digits, folder, tfds"),
    ({"data__forget__mode": "random"}, "unknown data.forget.mode 'random'; valid: fraction, class, ids, per_class"),
    ({"data__forget__sampling": "last"}, "unknown data.forget.sampling 'last'; valid: random, first"),
    ({"lotus__optimizer__name": "lamb"}, "unknown lotus.optimizer.name 'lamb'; valid: sgd, adam, adamw"),
    ({"train__optimizer__schedule": "step"}, "unknown train.optimizer.schedule 'step'; valid: constant, cosine"),
    ({"data__crop": "centre"}, "unknown data.crop 'centre'; valid: none, resize, center"),
    ({"data__interpolation": "lanczos"}, "unknown data.interpolation 'lanczos'; valid: bilinear, bicubic"),
    ({"data__augment": "flip"}, "unknown data.augment 'flip'; valid: none, crop_flip, crop"),
    ({"dtype": "float16"}, "unknown dtype 'float16'; valid: float32, bfloat16"),
    ({"eval__jsd_form": "paper"}, "unknown eval.jsd_form 'paper'; valid: textbook, compat"),
    ({"eval__rf_jsd_unseen": "train"}, "unknown eval.rf_jsd_unseen 'train'; valid: val, test, val+test"),
    ({"methods": "lotus,forgetful"}, f"unknown method 'forgetful' in methods; valid: {METHODS}"),
    ({"methods": " , "}, f"methods must name at least one method, got ' , '; valid: {METHODS}"),
    ({"methods": "ssd,lotus,ssd"}, "methods lists method 'ssd' more than once, got 'ssd,lotus,ssd'"),
    ({"stages": "train,deploy"}, "unknown stage 'deploy' in stages; valid: train, retrain, unlearn, evaluate, audit"),
    ({"model__variant": "XL/16"}, "model.variant must be '<size>/<patch>' with size Ti, S, B or L (e.g. 'B/16'), "
                                  "got 'XL/16'"),
    ({"data__train_split": ""}, "data.train_split must be a non-empty string, got ''"),
])
def test_names(overrides, message):
    _check(overrides, message)


def test_audit_stage_is_a_valid_name():
    assert _error(stages="unlearn,evaluate,audit") is None


@pytest.mark.parametrize("key", ["compat", "distributed", "data.label_cache", "data.skip_corrupt",
                                 "data.cache_unlearning", "lotus.compat"])
def test_booleans(key):
    assert _error(**{key.replace(".", "__"): "yes"}) == f"{key} must be True or False, got 'yes'"
    assert _error(**{key.replace(".", "__"): 1}) == f"{key} must be True or False, got 1"
    assert _error(**{key.replace(".", "__"): True}) is None


@pytest.mark.parametrize("overrides,message", [
    ({"unsir__impair_epochs": 11}, "unsir.impair_epochs must be <= unsir.epochs, got 11 > 10"),
    ({"scrub__msteps": 6, "scrub__epochs": 5}, "scrub.msteps must be <= scrub.epochs, got 6 > 5"),
    ({"data__crop": "center", "data__resize_size": 200, "data__crop_size": 224},
     "data.crop=center needs data.resize_size >= data.crop_size, got 200 < 224"),
    ({"data__crop": "center", "data__crop_size": 224},
     "data.crop=center needs data.resize_size >= data.crop_size, got None < 224"),
    ({"data__crop": "resize"}, "data.crop=resize needs --config.data.crop_size"),
    ({"data__crop": "resize", "data__crop_size": 32, "data__image_size": 32},
     "data.image_size and data.crop=resize both resize; set data.crop_size instead"),
    ({"data__source": "folder"}, "data.source=folder needs --config.data.path=<image-folder tree or .tar.gz>"),
    ({"data__source": "tfds"}, "data.source=tfds needs --config.data.name=<tfds dataset name>"),
    ({"data__forget__mode": "ids"},
     "data.forget.mode=ids needs --config.data.forget.ids_file=<file of training example ids>"),
    ({"data__forget__mode": "per_class", "data__train_per_class": 5},
     "data.forget.mode=per_class needs data.train_per_class > data.forget.per_class, got 5 <= 5"),
    ({"mesh__data": -1, "mesh__fsdp": -1},
     "mesh.data and mesh.fsdp cannot both be -1 (the rest of the devices); set one to a device count"),
    ({"model__name": "vit", "model__hidden_size": 100},
     "model.hidden_size 100 is not divisible by model.num_heads 12 (model.variant 'B/16')"),
    ({"data__mean": (0.5, 0.5), "data__std": (0.5, 0.5, 0.5)},
     "data.mean has 2 values and data.std 3; give 1 or one per channel for each"),
    ({"data__channels": 1, "data__mean": (0.5, 0.5, 0.5)},
     "data.mean has 3 values but data.channels=1; give one value"),
    ({"data__channels": 3, "data__std": (0.5, 0.5)},
     "data.std has 2 values but data.channels=3; give one value or 3"),
])
def test_cross_key_checks(overrides, message):
    _check(overrides, message)


def test_cross_key_checks_accept_consistent_settings():
    assert _error(unsir__impair_epochs=10, scrub__msteps=10) is None
    assert _error(data__crop="center", data__resize_size=224, data__crop_size=224) is None
    assert _error(model__name="vit", model__variant="Ti/4", model__hidden_size=32, model__num_heads=2) is None
    assert _error(data__mean=(0.5, 0.5, 0.5), data__std=(0.5,), data__channels=3) is None
    assert _error(mesh__data=2, mesh__fsdp=-1) is None


def test_a_single_key_error_comes_before_the_cross_key_checks():
    assert _error(data__source="folder", train__epochs=0) == "train.epochs must be an integer >= 1, got 0"


# -- the command line ------------------------------------------------------------------------------------

def test_command_line_refuses_a_bad_value_with_one_line_and_creates_nothing(tmp_path):
    workdir = tmp_path / "w"
    r = subprocess.run([sys.executable, "-m", "lotus_jax.main", "--config.train.epochs=-1", f"--workdir={workdir}"],
                       capture_output=True, text=True, cwd=tmp_path, timeout=300)
    err = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 1 and err == ["error: train.epochs must be an integer >= 1, got -1"], r.stderr
    assert list(tmp_path.iterdir()) == []


def test_the_default_config_lives_in_the_package():
    from lotus_jax import main

    package = Path(lotus_jax.__file__).resolve().parent
    assert main.DEFAULT_CONFIG.is_file() and package in main.DEFAULT_CONFIG.resolve().parents
    assert main.DEFAULT_CONFIG.stem == "default"  # the default workdir stays runs/default
