"""The config: its shape (`base_config()`, which `configs/*.py` start from) and its schema (`SCHEMA`, a rule
for every leaf key, plus the cross-key checks in `CROSS_CHECKS`). `validate(cfg)` runs them all before any
work starts and raises a one-line `ConfigError` naming the key, what is valid and the value given.

Every key a user may override with `--config.key=value` exists in `base_config()` (ml_collections rejects
unknown keys, so a typo fails instead of being ignored). Names come from the registries that use them.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

import ml_collections as mlc
from ml_collections.config_dict import placeholder

from lotus_jax import methods
from lotus_jax.data.sources import CROP_MODES, INTERPOLATIONS, SOURCES
from lotus_jax.data.splits import FORGET_MODES, SAMPLINGS
from lotus_jax.data.transforms import AUGMENTATIONS
from lotus_jax.errors import ConfigError
from lotus_jax.evaluate import JSD_FORMS
from lotus_jax.models import REGISTRY as MODELS
from lotus_jax.models.vit import vit_variant_config
from lotus_jax.train.optim import OPTIMIZERS, SCHEDULES, optimizer_config

STAGES = ("train", "retrain", "unlearn", "evaluate", "audit")
AUDIT_ORIGINALS = ("one", "per_model")
DEFAULT_STAGES = "train,retrain,unlearn,evaluate"
DTYPES = ("float32", "bfloat16")
RF_JSD_UNSEEN = ("val", "test", "val+test")
MAX_SEED = 2**63 - 1  # jax.random.key takes a signed 64-bit seed


def base_config() -> mlc.ConfigDict:
    """Every key, with the defaults of the paper's CIFAR-10 / ResNet-18 setting."""
    c = mlc.ConfigDict()
    c.seed = 3407
    c.seeds = ""  # e.g. "3407,13,12": the whole comparison per seed, reported as mean ± std
    c.stages = DEFAULT_STAGES
    # Epoch checkpoints (what a rerun resumes from) at most this often; 0: after every epoch. The last epoch and a
    # stop request always write one. Epochs shorter than a checkpoint write (small data) are not all saved.
    c.checkpoint_every_s = 30.0
    c.methods = ",".join(methods.REGISTRY.names())
    c.dtype = "float32"
    c.compat = False  # reproduce the reference code's rounding and JSD form (docs/definitions.md §5)
    c.original_checkpoint = placeholder(str)  # start from this orbax checkpoint instead of training
    c.gold_checkpoint = placeholder(str)
    # Devices on each mesh axis (-1 = the rest); data * fsdp = all devices (one process: or its first ones).
    # Parameters and optimizer state of 2**14+ elements are split along fsdp, batches along data and fsdp.
    c.mesh = mlc.ConfigDict({"data": -1, "fsdp": 1})
    c.distributed = False  # jax.distributed.initialize() first (multi-host; also when JAX_COORDINATOR_ADDRESS)

    c.data = mlc.ConfigDict()
    c.data.source = "digits"  # digits | folder | tfds
    c.data.name = placeholder(str)  # tfds name
    c.data.path = placeholder(str)  # folder: directory or .tar/.tar.gz
    c.data.data_dir = placeholder(str)  # tfds data_dir
    c.data.train_split = "train"
    c.data.heldout_split = "test"
    # folder: a separate test folder; then heldout_split is the val folder and nothing is halved (MUFAC)
    c.data.test_split = placeholder(str)
    c.data.channels = placeholder(int)
    c.data.image_size = placeholder(int)  # squash to N x N on load (folder/tfds); or use data.crop
    c.data.crop = "none"  # host-side resize on load (folder/tfds): none | resize | center
    c.data.resize_size = placeholder(int)  # center: shorter side resized to this (torchvision Resize)
    c.data.crop_size = placeholder(int)  # center: central square kept; resize: output side
    c.data.interpolation = "bilinear"  # bilinear | bicubic (Pillow, antialiased like torchvision on PIL)
    c.data.decode_workers = -1  # threads decoding each tfds batch; -1 = all CPU cores
    c.data.label_cache = True  # tfds: keep each split's labels in <dataset dir>/lotus_jax_labels/
    c.data.skip_corrupt = False  # False: a corrupt image stops the run; True: it is left out and counted
    c.data.cache_unlearning = True  # encoded sources: decode D_f and D_r once into <workdir>/cache/train.npy
    c.data.val_fraction = 0.5
    c.data.train_per_class = placeholder(int)  # keep only the first N training images of each class
    c.data.heldout_per_class = placeholder(int)
    c.data.mean = (0.5,)
    c.data.std = (0.5,)
    c.data.augment = "none"  # none | crop | crop_flip: original/gold training
    c.data.unlearn_augment = False  # unlearning batches also go through data.augment (the reference code does)
    c.data.forget = mlc.ConfigDict(dict(mode="fraction", sampling="random", fraction=0.1, classes=0,
                                        ids_file="", per_class=5, retain_per_class=placeholder(int)))

    c.model = mlc.ConfigDict()
    c.model.name = "resnet18"
    c.model.width = 64
    c.model.small_conv_size = 2  # ResNet: convs with output maps up to N x N as im2col matmuls; 0 = off
    c.model.image_size = placeholder(int)  # model input resolution (resized on device)
    c.model.variant = "B/16"
    c.model.patch_size = placeholder(int)
    c.model.hidden_size = placeholder(int)
    c.model.num_layers = placeholder(int)
    c.model.num_heads = placeholder(int)
    c.model.mlp_dim = placeholder(int)
    c.model.layernorm_epsilon = placeholder(float)
    c.model.representation_size = placeholder(int)  # ViT pre-logits layer (imported checkpoints keep theirs)

    for stage in ("train", "retrain"):
        # init_checkpoint: start from these weights instead of a random initialisation (fine-tuning)
        c[stage] = mlc.ConfigDict(dict(epochs=150, batch_size=512, init_checkpoint=placeholder(str)))
        c[stage].optimizer = optimizer_config("sgd", 0.1, 5e-4, momentum=0.9, schedule="cosine", warmup_epochs=5,
                                              epochs=150)
    for name, section in methods.default_configs().items():
        c[name] = section
    c.lotus.compat = c.get_ref("compat")

    c.eval = mlc.ConfigDict(dict(batch_size=512, jsd_form="textbook", rf_jsd_unseen="val"))
    # The per-example audit (stage `audit`): populations of `models` gold and unlearned models each, from one
    # original (the challenge protocol) or one original per model, trained as vmapped ensembles (vmap=True) or
    # one member after another, each bit for bit its single run (False); unset: vmapped except on one CPU device.
    c.audit = mlc.ConfigDict(dict(models=16, methods="lotus,finetune,random_labels,scrub", originals="one",
                                  mesh_models=1, vmap=placeholder(bool)))
    return c


def set_training(c: mlc.ConfigDict, epochs: int, batch_size: int, lr: float, warmup_epochs: int = 1) -> None:
    """Original and gold training alike: epochs, batch size, learning rate and warm-up (configs' CPU variants)."""
    for stage in ("train", "retrain"):
        c[stage].epochs, c[stage].batch_size = epochs, batch_size
        c[stage].optimizer.lr, c[stage].optimizer.warmup_epochs = lr, warmup_epochs


def set_method_epochs(c: mlc.ConfigDict, epochs: int) -> None:
    """Every method the same epoch budget as LoTUS (docs/definitions.md §4; SCRUB's max-steps follow)."""
    for name in methods.REGISTRY.names():
        if "epochs" in c[name]:
            c[name].epochs = epochs


def small_resnet_variant(c: mlc.ConfigDict) -> None:
    """The `:small` CPU variant of the ResNet-18 dataset configs: width 8 at 32 px, 4 training epochs, 2 per
    method, small batches."""
    c.model.width, c.model.image_size = 8, 32
    set_training(c, epochs=4, batch_size=64, lr=0.05)
    set_method_epochs(c, 2)
    c.lotus.batch_size, c.eval.batch_size = 32, 256


def link_epochs(c: mlc.ConfigDict) -> mlc.ConfigDict:
    """Makes each training optimizer's schedule length follow its stage's `epochs` override."""
    for stage in ("train", "retrain"):
        c[stage].optimizer.epochs = c[stage].get_ref("epochs")
    return c


# -- rules for one value ------------------------------------------------------------------------------------

class KeyRule(Protocol):
    """What `SCHEMA` holds for each key."""

    def error(self, key: str, value: Any) -> str | None:
        """The one-line message when `value` is not valid for `key`, else None."""


@dataclasses.dataclass(frozen=True)
class Rule:
    """A test of one value and what it accepts, in words ("an integer >= 1")."""

    test: Callable[[Any], bool]
    text: str

    def error(self, key: str, value: Any) -> str | None:
        """The one-line message for a value that fails the test, else None."""
        return None if self.test(value) else f"{key} must be {self.text}, got {value!r}"


@dataclasses.dataclass(frozen=True)
class OneOf:
    """One name out of `names` (a tuple, or a registry read at check time)."""

    names: Iterable[str]

    def error(self, key: str, value: Any) -> str | None:
        valid = tuple(self.names)
        if isinstance(value, str) and value in valid:
            return None
        return f"unknown {key} {value!r}; valid: {', '.join(valid)}"


@dataclasses.dataclass(frozen=True)
class NameList:
    """A comma-separated list of distinct names out of `names`, at least one; `what` names one entry."""

    names: Iterable[str]
    what: str

    def error(self, key: str, value: Any) -> str | None:
        valid = tuple(self.names)
        if not isinstance(value, str):
            return f"{key} must be a comma-separated list of {self.what}s, got {value!r}"
        items = split_names(value)
        bad = [s for s in items if s not in valid]
        if bad:
            return f"unknown {self.what} {bad[0]!r} in {key}; valid: {', '.join(valid)}"
        if not items:
            return f"{key} must name at least one {self.what}, got {value!r}; valid: {', '.join(valid)}"
        twice = sorted({s for s in items if items.count(s) > 1})
        return f"{key} lists {self.what} {twice[0]!r} more than once, got {value!r}" if twice else None


def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_real(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def integer(lo: int, hi: int | None = None, *, also: tuple[int, ...] = ()) -> Rule:
    """An int in [lo, hi] (hi None: no upper bound), or one of the special values `also` (e.g. -1)."""
    text = f"an integer >= {lo}" if hi is None else f"an integer in [{lo}, {hi}]"
    return Rule(lambda v: _is_int(v) and (v in also or (v >= lo and (hi is None or v <= hi))),
                " or ".join([*map(str, also), text]))


def number(lo: float = -math.inf, hi: float = math.inf, *, open_lo: bool = False, open_hi: bool = False) -> Rule:
    """A finite int or float in the interval from lo to hi (each end closed unless `open_*`)."""

    def test(v: Any) -> bool:
        return (_is_real(v) and (v > lo if open_lo else v >= lo) and (v < hi if open_hi else v <= hi))

    if math.isinf(lo) and math.isinf(hi):
        text = "a finite number"
    elif math.isinf(hi):
        text = f"a finite number {'>' if open_lo else '>='} {lo:g}"
    else:
        text = f"a number in {'(' if open_lo else '['}{lo:g}, {hi:g}{')' if open_hi else ']'}"
    return Rule(test, text)


def optional(rule: Rule) -> Rule:
    """None (an unset placeholder), or what `rule` accepts."""
    return Rule(lambda v: v is None or rule.test(v), f"None or {rule.text}")


def numbers_list(element: Rule) -> Rule:
    """A non-empty tuple or list whose every entry `element` accepts."""
    return Rule(lambda v: isinstance(v, (tuple, list)) and len(v) > 0 and all(element.test(x) for x in v),
                f"a non-empty tuple of {element.text.removeprefix('a ').replace('number', 'numbers')}")


def split_names(text: str) -> list[str]:
    """The stripped, non-empty entries of a comma-separated list."""
    return [s.strip() for s in str(text).split(",") if s.strip()]


def _seed_list(v: Any) -> bool:
    items = split_names(v) if isinstance(v, str) else None
    return (items is not None and all(re.fullmatch(r"[0-9]+", s) and int(s) <= MAX_SEED for s in items)
            and len(set(map(int, items))) == len(items))


def _vit_variant(v: Any) -> bool:
    try:
        vit_variant_config(v)
    except (ValueError, TypeError):
        return False
    return True


def _class_ids(v: Any) -> bool:
    ids = list(v) if isinstance(v, (tuple, list)) else [v]
    return len(ids) > 0 and all(_is_int(c) and c >= 0 for c in ids)


COUNT = integer(1)  # epochs, batch sizes, widths, steps: at least one
SIZE = optional(integer(1))  # optional sizes and counts (unset placeholders)
ALL_OR_COUNT = integer(1, also=(-1,))  # -1 = all (cores, remaining devices)
FINITE = number()
POSITIVE = number(0, open_lo=True)  # learning rates, temperatures
NON_NEGATIVE = number(0)  # weight decay, loss weights
FRACTION_OPEN = number(0, 1, open_lo=True, open_hi=True)  # strictly between 0 and 1
FRACTION_SOME = number(0, 1, open_lo=True)  # (0, 1]: a non-empty part, possibly all
FLAG = Rule(lambda v: isinstance(v, bool), "True or False")
STRING = Rule(lambda v: isinstance(v, str), "a string")
NAME = Rule(lambda v: isinstance(v, str) and v.strip() != "", "a non-empty string")
SEED = integer(0, MAX_SEED)


def _section(prefix: str, rules: dict[str, KeyRule], optimizer: bool = True) -> dict[str, KeyRule]:
    """`rules` under `prefix.`, plus the optimizer sub-section's rules when the section trains."""
    opt = {"optimizer.name": OneOf(OPTIMIZERS), "optimizer.lr": POSITIVE, "optimizer.weight_decay": NON_NEGATIVE,
           "optimizer.momentum": number(0, 1, open_hi=True), "optimizer.schedule": OneOf(SCHEDULES),
           "optimizer.warmup_epochs": NON_NEGATIVE, "optimizer.epochs": COUNT}
    return {f"{prefix}.{k}": r for k, r in {**rules, **(opt if optimizer else {})}.items()}


EPOCHS_BATCH = {"epochs": COUNT, "batch_size": COUNT}

# Every leaf key of `base_config()` -> its rule. Epochs are >= 1 everywhere (a stage or method that should not
# train is left out of `stages`/`methods`); 0 is valid where it means "none of this": scrub.msteps (no
# max-steps), unsir.impair_epochs (repair only), optimizer warm-up, model.small_conv_size (fast path off).
SCHEMA: dict[str, KeyRule] = {
    "seed": SEED,
    "seeds": Rule(_seed_list, f"comma-separated distinct integers in [0, {MAX_SEED}] (or empty)"),
    "stages": NameList(STAGES, "stage"),
    "checkpoint_every_s": NON_NEGATIVE,
    "methods": NameList(methods.REGISTRY, "method"),
    "dtype": OneOf(DTYPES),
    "compat": FLAG,
    "original_checkpoint": optional(STRING),
    "gold_checkpoint": optional(STRING),
    "mesh.data": ALL_OR_COUNT,
    "mesh.fsdp": ALL_OR_COUNT,
    "distributed": FLAG,
    "data.source": OneOf(SOURCES),
    "data.name": optional(NAME),
    "data.path": optional(STRING),
    "data.data_dir": optional(STRING),
    "data.train_split": NAME,
    "data.heldout_split": NAME,
    "data.test_split": optional(NAME),
    "data.channels": Rule(lambda v: v is None or (_is_int(v) and v in (1, 3)), "None, 1 or 3"),
    "data.image_size": SIZE,
    "data.crop": OneOf(CROP_MODES),
    "data.resize_size": SIZE,
    "data.crop_size": SIZE,
    "data.interpolation": OneOf(INTERPOLATIONS),
    "data.decode_workers": ALL_OR_COUNT,
    "data.label_cache": FLAG,
    "data.skip_corrupt": FLAG,
    "data.cache_unlearning": FLAG,
    "data.val_fraction": FRACTION_OPEN,
    "data.train_per_class": SIZE,
    "data.heldout_per_class": SIZE,
    "data.mean": numbers_list(FINITE),
    "data.std": numbers_list(POSITIVE),
    "data.augment": OneOf(AUGMENTATIONS),
    "data.unlearn_augment": FLAG,
    "data.forget.mode": OneOf(FORGET_MODES),
    "data.forget.sampling": OneOf(SAMPLINGS),
    "data.forget.fraction": FRACTION_OPEN,
    "data.forget.classes": Rule(_class_ids, "a class id >= 0 or a non-empty list of them"),
    "data.forget.ids_file": STRING,
    "data.forget.per_class": COUNT,
    "data.forget.retain_per_class": SIZE,
    "model.name": OneOf(MODELS),
    "model.width": COUNT,
    "model.small_conv_size": integer(0),
    "model.image_size": SIZE,
    "model.variant": Rule(_vit_variant, "'<size>/<patch>' with size Ti, S, B or L (e.g. 'B/16')"),
    "model.patch_size": SIZE,
    "model.hidden_size": SIZE,
    "model.num_layers": SIZE,
    "model.num_heads": SIZE,
    "model.mlp_dim": SIZE,
    "model.layernorm_epsilon": optional(POSITIVE),
    "model.representation_size": SIZE,
    **_section("train", {**EPOCHS_BATCH, "init_checkpoint": optional(STRING)}),
    **_section("retrain", {**EPOCHS_BATCH, "init_checkpoint": optional(STRING)}),
    **_section("lotus", {**EPOCHS_BATCH, "alpha": FINITE, "retain_fraction": FRACTION_SOME,
                         "stop_threshold": optional(FINITE), "compat": FLAG,
                         "cache_teacher": FLAG}),
    **_section("finetune", EPOCHS_BATCH),
    **_section("neggrad_plus", {**EPOCHS_BATCH, "beta": number(0, 1)}),
    **_section("random_labels", EPOCHS_BATCH),
    **_section("bad_teacher", {**EPOCHS_BATCH, "retain_fraction": FRACTION_SOME, "temperature": POSITIVE}),
    **_section("scrub", {**EPOCHS_BATCH, "msteps": integer(0), "kd_temperature": POSITIVE, "alpha": NON_NEGATIVE,
                         "gamma": NON_NEGATIVE}),
    **_section("ssd", {"batch_size": COUNT, "alpha": POSITIVE, "lam": POSITIVE}, optimizer=False),
    **_section("unsir", {**EPOCHS_BATCH, "impair_epochs": integer(0), "retain_per_class": SIZE,
                         "noise_steps": COUNT, "noise_lr": POSITIVE, "noise_lambda": NON_NEGATIVE}),
    **_section("salun", {**EPOCHS_BATCH, "mask_fraction": FRACTION_SOME}),
    "eval.batch_size": COUNT,
    "eval.jsd_form": OneOf(JSD_FORMS),
    "eval.rf_jsd_unseen": OneOf(RF_JSD_UNSEEN),
    "audit.models": integer(6),  # ceiling halves of >= 3 (halves of 2 give the challenge score no bucket)
    "audit.methods": NameList(methods.REGISTRY, "method"),
    "audit.originals": OneOf(AUDIT_ORIGINALS),
    "audit.mesh_models": ALL_OR_COUNT,
    "audit.vmap": optional(FLAG),
}


# -- checks across keys (run after every key passed its own rule) -------------------------------------------

@dataclasses.dataclass(frozen=True)
class Cross:
    """A check of several keys together: `check(*values)` returns the one-line message, or None when fine."""

    keys: tuple[str, ...]
    check: Callable[..., str | None]


def _mesh(data: int, fsdp: int) -> str | None:
    if data == fsdp == -1:
        return "mesh.data and mesh.fsdp cannot both be -1 (the rest of the devices); set one to a device count"
    return None


def _crop(crop: str, image_size: int | None, resize_size: int | None, crop_size: int | None) -> str | None:
    if crop != "none" and image_size:
        return f"data.image_size and data.crop={crop} both resize; set data.crop_size instead"
    if crop != "none" and crop_size is None:
        return f"data.crop={crop} needs --config.data.crop_size"
    if crop == "center" and (resize_size is None or resize_size < crop_size):
        return f"data.crop=center needs data.resize_size >= data.crop_size, got {resize_size} < {crop_size}"
    return None


def _mean_std(mean: Sequence[float], std: Sequence[float], channels: int | None) -> str | None:
    for key, v in (("data.mean", mean), ("data.std", std)):
        if len(v) != 1 and channels is not None and len(v) != channels:
            return (f"{key} has {len(v)} values but data.channels={channels}; give one value"
                    + ("" if channels == 1 else f" or {channels}"))
    if len(mean) != len(std) and 1 not in (len(mean), len(std)):
        return f"data.mean has {len(mean)} values and data.std {len(std)}; give 1 or one per channel for each"
    return None


def _test_split(source: str, test: str | None, train: str, heldout: str) -> str | None:
    if not test:
        return None
    if source != "folder":
        return (f"data.test_split (a separate test folder) is read by data.source=folder only, got data.source="
                f"{source}; unset it")
    if test in (train, heldout):
        return (f"data.test_split must name a folder other than data.train_split ({train!r}) and "
                f"data.heldout_split ({heldout!r}), got {test!r}")
    return None


def _vit_heads(name: str, variant: str, hidden: int | None, heads: int | None) -> str | None:
    if name != "vit":
        return None
    arch = vit_variant_config(variant)
    hidden, heads = hidden or arch["hidden_size"], heads or arch["num_heads"]
    if hidden % heads:
        return f"model.hidden_size {hidden} is not divisible by model.num_heads {heads} (model.variant {variant!r})"
    return None


def _not_more(key: str, limit_key: str) -> Cross:
    """`key` <= `limit_key` (e.g. a phase's epochs within the method's epochs)."""
    return Cross((key, limit_key), lambda v, limit: f"{key} must be <= {limit_key}, got {v} > {limit}"
                 if v > limit else None)


CROSS_CHECKS: tuple[Cross, ...] = (
    Cross(("mesh.data", "mesh.fsdp"), _mesh),
    Cross(("data.source", "data.path"), lambda src, path: "data.source=folder needs --config.data.path=<image-folder "
          "tree or .tar.gz>" if src == "folder" and not path else None),
    Cross(("data.source", "data.name"), lambda src, name: "data.source=tfds needs --config.data.name=<tfds dataset "
          "name>" if src == "tfds" and not name else None),
    Cross(("data.source", "data.test_split", "data.train_split", "data.heldout_split"), _test_split),
    Cross(("data.crop", "data.image_size", "data.resize_size", "data.crop_size"), _crop),
    Cross(("data.mean", "data.std", "data.channels"), _mean_std),
    Cross(("data.forget.mode", "data.forget.ids_file"), lambda mode, ids: "data.forget.mode=ids needs "
          "--config.data.forget.ids_file=<file of training example ids>" if mode == "ids" and not ids else None),
    Cross(("data.forget.mode", "data.forget.per_class", "data.train_per_class"),
          lambda mode, k, n: f"data.forget.mode=per_class needs data.train_per_class > data.forget.per_class, got "
          f"{n} <= {k}" if mode == "per_class" and n is not None and n <= k else None),
    Cross(("model.name", "model.variant", "model.hidden_size", "model.num_heads"), _vit_heads),
    _not_more("scrub.msteps", "scrub.epochs"),
    _not_more("unsir.impair_epochs", "unsir.epochs"),
    Cross(("audit.models", "audit.mesh_models"), lambda n, k: f"audit.models={n} must be a multiple of "
          f"audit.mesh_models={k} (each device trains as many models)" if k > 0 and n % k else None),
)


def leaves(cfg: mlc.ConfigDict, prefix: str = "") -> dict[str, Any]:
    """Every leaf of `cfg` by dotted key, in config order, references resolved."""
    out: dict[str, Any] = {}
    for key, value in cfg.items():
        if isinstance(value, mlc.ConfigDict):
            out.update(leaves(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def validate(cfg: mlc.ConfigDict) -> None:
    """Checks every key with a rule, then the cross-key checks; raises `ConfigError` at the first problem.

    Keys absent from `cfg` are skipped (their users fall back to defaults); leaves without a rule are not
    checked (tests/test_config.py makes sure every key of `base_config()` has one).
    """
    values = leaves(cfg)
    for key, value in values.items():
        rule = SCHEMA.get(key)
        message = rule.error(key, value) if rule is not None else None
        if message:
            raise ConfigError(message)
    for cross in CROSS_CHECKS:
        if all(k in values for k in cross.keys):
            message = cross.check(*(values[k] for k in cross.keys))
            if message:
                raise ConfigError(message)


__all__ = ["CROSS_CHECKS", "DTYPES", "SCHEMA", "STAGES", "Cross", "KeyRule", "NameList", "OneOf", "Rule", "base_config",
           "integer", "leaves", "link_epochs", "number", "optional", "split_names", "validate"]


def method_settings(cfg: Any, name: str) -> dict[str, Any]:
    """What a method's unlearned model depends on beyond the run-defining config: its section, and whether its
    batches go through the training augmentation. A finished method (or audit population) with other settings
    is run again."""
    return {**json.loads(cfg[name].to_json_best_effort()),
            "unlearn_augment": bool(cfg.data.get("unlearn_augment", False))}
