"""Forget / retain / val / test splits (docs/definitions.md §2) as pure functions of (labels, settings, seed).

Indices of forget and retain point into the training source; val and test into the held-out source.
The held-out source is split per class into val and test, or, when it is made of a val and a test folder
(`data.test_split`), val is the first folder and test the second. A split is saved in the workdir
(`splits.npz` plus its settings) and a rerun reuses it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from lotus_jax.data.sources import DataError, heldout_val_size
from lotus_jax.registry import Registry

SAMPLINGS = ("random", "first")


@dataclasses.dataclass(frozen=True)
class Splits:
    """Index arrays (int64, sorted): forget/retain into train, val/test into held-out."""

    forget: np.ndarray
    retain: np.ndarray
    val: np.ndarray
    test: np.ndarray
    class_unlearning: bool = False

    def sizes(self) -> dict[str, int]:
        return {k: len(getattr(self, k)) for k in ("forget", "retain", "val", "test")}


def _pick(rng: np.random.Generator, idx: np.ndarray, k: int, sampling: str) -> np.ndarray:
    return idx[:k] if sampling == "first" else rng.permutation(idx)[:k]


@dataclasses.dataclass(frozen=True)
class ForgetMode:
    """One `data.forget.mode`: which config keys define its split, and how it picks the forget set.

    `select(labels, settings, rng, sampling)` returns (forget, retain mask or None = everything else).
    """

    settings: Callable[[Any], dict[str, Any]]
    select: Callable[[np.ndarray, dict[str, Any], np.random.Generator, str], tuple[np.ndarray, np.ndarray | None]]
    class_unlearning: bool = False


FORGET_MODES: Registry[ForgetMode] = Registry("forget mode", DataError)


def _fraction(labels: np.ndarray, settings: dict[str, Any], rng: np.random.Generator, sampling: str
              ) -> tuple[np.ndarray, None]:
    frac = float(settings["fraction"])
    if not 0.0 < frac < 1.0:
        raise DataError(f"forget fraction {frac} is outside (0, 1); set --config.data.forget.fraction")
    chosen = [_pick(rng, np.flatnonzero(labels == c), int(round(frac * np.sum(labels == c))), sampling)
              for c in np.unique(labels)]
    return np.concatenate(chosen), None


def _class(labels: np.ndarray, settings: dict[str, Any], rng: np.random.Generator, sampling: str
           ) -> tuple[np.ndarray, None]:
    classes = np.unique(labels)
    wanted = np.atleast_1d(np.asarray(settings["classes"], dtype=np.int64))
    missing = sorted(set(wanted.tolist()) - set(classes.tolist()))
    if wanted.size == 0 or missing:
        raise DataError(f"class(es) to forget {missing or '[]'} do not exist; valid classes are "
                        f"{int(classes.min())}..{int(classes.max())}")
    return np.flatnonzero(np.isin(labels, wanted)), None


def _ids(labels: np.ndarray, settings: dict[str, Any], rng: np.random.Generator, sampling: str
         ) -> tuple[np.ndarray, None]:
    return load_ids(settings["ids_file"], len(labels)), None


def _per_class(labels: np.ndarray, settings: dict[str, Any], rng: np.random.Generator, sampling: str
               ) -> tuple[np.ndarray, np.ndarray]:
    k, m = int(settings["per_class"]), settings.get("retain_per_class")
    forget_parts, retain_parts = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        idx = idx if sampling == "first" else rng.permutation(idx)
        if len(idx) <= k:
            raise DataError(f"class {int(c)} has {len(idx)} examples, not more than per_class={k}")
        forget_parts.append(idx[:k])
        retain_parts.append(idx[k:] if m is None else idx[k:k + int(m)])
    retain_mask = np.zeros(len(labels), bool)
    retain_mask[np.concatenate(retain_parts)] = True
    return np.concatenate(forget_parts), retain_mask


FORGET_MODES.register("fraction", ForgetMode(lambda f: {"fraction": float(f.fraction)}, _fraction))
FORGET_MODES.register("class", ForgetMode(lambda f: {"classes": [int(c) for c in np.atleast_1d(f.classes)]}, _class,
                                          class_unlearning=True))
FORGET_MODES.register("ids", ForgetMode(lambda f: {"ids_file": str(f.ids_file)}, _ids))
FORGET_MODES.register("per_class", ForgetMode(
    lambda f: {"per_class": int(f.per_class),
               "retain_per_class": None if f.get("retain_per_class") is None else int(f.retain_per_class)},
    _per_class))


def forget_indices(labels: np.ndarray, settings: dict[str, Any], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Returns (forget, retain) index arrays into the training labels for the given settings.

    Modes (`FORGET_MODES`): `fraction` (round(fraction·n_c) per class c, sampled with the seed or the `first`
    ones as the reference code does), `class` (every example of the listed classes), `ids` (an explicit id
    list from a .txt/.npy file), `per_class` (ImageNet protocol: `per_class` forget examples per class and the
    next `retain_per_class` as retain; retain = everything else when that is None).
    """
    mode, sampling = FORGET_MODES.get(settings["mode"]), settings.get("sampling", "random")
    if sampling not in SAMPLINGS:
        raise DataError(f"unknown forget sampling {sampling!r}; valid: {', '.join(SAMPLINGS)}")
    n = len(labels)
    rng = np.random.default_rng([seed, 1])
    forget, retain_mask = mode.select(labels, settings, rng, sampling)
    forget = np.sort(forget.astype(np.int64))
    if retain_mask is None:
        retain_mask = np.ones(n, bool)
    retain_mask[forget] = False
    retain = np.flatnonzero(retain_mask).astype(np.int64)
    if not len(forget):
        raise DataError(f"the forget set is empty with {settings}; forget a larger fraction or more ids")
    if not len(retain):
        raise DataError(f"the retain set is empty with {settings}; forget fewer examples")
    return forget, retain


def load_ids(path: str, n: int) -> np.ndarray:
    """Reads forget ids (integers separated by whitespace or commas, or a .npy) and validates them."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"forget ids file {str(p)!r} does not exist; set --config.data.forget.ids_file")
    try:
        ids = np.load(p) if p.suffix == ".npy" else np.array(
            [int(t) for t in p.read_text().replace(",", " ").split()], np.int64)
    except ValueError as e:
        raise DataError(f"forget ids file {str(p)!r} is not a list of integers ({e})") from None
    ids = np.asarray(ids).reshape(-1)
    if ids.size == 0:
        raise DataError(f"forget ids file {str(p)!r} is empty; it must list at least one training example id")
    if not np.issubdtype(ids.dtype, np.integer):
        raise DataError(f"forget ids in {str(p)!r} must be integers, got {ids.dtype}")
    bad = ids[(ids < 0) | (ids >= n)]
    if bad.size:
        raise DataError(f"forget ids {bad[:5].tolist()} are out of range; valid ids are 0..{n - 1}")
    uniq, counts = np.unique(ids, return_counts=True)
    if np.any(counts > 1):
        raise DataError(f"forget ids {uniq[counts > 1][:5].tolist()} are listed more than once in {str(p)!r}")
    return ids.astype(np.int64)


def split_heldout(labels: np.ndarray, seed: int, val_fraction: float = 0.5, val_size: int | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Splits held-out indices into (val, test), stratified by class, `val_fraction` of each class to val.

    With `val_size` (a held-out source made of a val folder followed by a test folder, `data.test_split`),
    val is the first `val_size` examples and test the rest, whatever the seed and `val_fraction`.
    """
    if val_size is not None:
        n = len(labels)
        if not 0 < val_size < n:
            raise DataError(f"the val part has {val_size} of the {n} held-out examples; the val and the test "
                            f"folder (data.heldout_split, data.test_split) must both hold images")
        return np.arange(val_size, dtype=np.int64), np.arange(val_size, n, dtype=np.int64)
    rng = np.random.default_rng([seed, 2])
    val = []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        val.append(idx[: int(round(len(idx) * val_fraction))])
    val_idx = np.sort(np.concatenate(val)).astype(np.int64)
    mask = np.ones(len(labels), bool)
    mask[val_idx] = False
    return val_idx, np.flatnonzero(mask).astype(np.int64)


def make_splits(train_labels: np.ndarray, heldout_labels: np.ndarray, settings: dict[str, Any],
                seed: int) -> Splits:
    """All four splits from the labels, the forget settings and the seed.

    When the held-out labels carry a val part (`sources.HeldoutLabels`, from `data.test_split`), val and test
    are that part and the rest; the settings must then name `test_split` (and must not otherwise).
    """
    val_size = heldout_val_size(heldout_labels)
    if (val_size is not None) != bool(settings.get("test_split")):
        raise DataError("the held-out source has separate val and test parts exactly when data.test_split is "
                        f"set; got test_split={settings.get('test_split')!r} and "
                        f"{'separate' if val_size is not None else 'no separate'} parts")
    forget, retain = forget_indices(np.asarray(train_labels), settings, seed)
    val, test = split_heldout(np.asarray(heldout_labels), seed, float(settings.get("val_fraction", 0.5)), val_size)
    return Splits(forget, retain, val, test, class_unlearning=FORGET_MODES.get(settings["mode"]).class_unlearning)


def split_settings(data_cfg, seed: int) -> dict[str, Any]:
    """The settings that determine a split (what is saved next to it and compared on reuse).

    With `data.test_split` the val and test folders replace `val_fraction` (val and test are not drawn).
    """
    f = data_cfg.forget
    s: dict[str, Any] = {"dataset": data_cfg.source + ":" + str(data_cfg.get("name") or data_cfg.get("path")),
                         "mode": f.mode, "sampling": f.get("sampling", "random"), "seed": int(seed)}
    if data_cfg.get("test_split"):
        s.update(heldout_split=str(data_cfg.heldout_split), test_split=str(data_cfg.test_split))
    else:
        s["val_fraction"] = float(data_cfg.get("val_fraction", 0.5))
    s.update(FORGET_MODES.get(f.mode).settings(f))
    return s


def data_fingerprint(train_labels: np.ndarray, heldout_labels: np.ndarray) -> dict[str, Any]:
    """How many training and held-out examples there are, and a SHA-256 of their labels in order: the indices
    of a saved split mean the same examples only while these hold (a folder that gained an image does not)."""
    digest = hashlib.sha256()
    for labels in (train_labels, heldout_labels):
        digest.update(np.asarray(labels, np.int64).tobytes() + b"|")
    return {"train": len(train_labels), "heldout": len(heldout_labels), "labels_sha256": digest.hexdigest()}


def save_splits(path: Path, splits: Splits, settings: dict[str, Any], data: dict[str, Any] | None = None) -> None:
    """Writes `splits.npz` atomically (temporary file, then rename), with the data's fingerprint when given."""
    tmp = path.with_suffix(".tmp.npz")
    extra = {} if data is None else {"data": json.dumps(data, sort_keys=True)}
    np.savez(tmp, forget=splits.forget, retain=splits.retain, val=splits.val, test=splits.test,
             class_unlearning=splits.class_unlearning, settings=json.dumps(settings, sort_keys=True), **extra)
    tmp.replace(path)


def load_or_make_splits(path: Path, train_labels: np.ndarray, heldout_labels: np.ndarray,
                        settings: dict[str, Any], seed: int) -> tuple[Splits, bool]:
    """Reuses the saved split when its settings match; makes and saves one otherwise.

    Returns (splits, reused). A saved split with different settings, or made for data with other example
    counts or labels (`data_fingerprint`; splits saved before it was recorded are not checked), is an error:
    the checkpoints in that workdir were made with it.
    """
    data = data_fingerprint(train_labels, heldout_labels)
    if path.exists():
        with np.load(path) as z:
            saved = json.loads(str(z["settings"]))
            if saved != json.loads(json.dumps(settings, sort_keys=True)):
                raise DataError(f"{path} was made with different split settings {saved}; use a new --workdir")
            then = json.loads(str(z["data"])) if "data" in z.files else data
            if then != data:
                raise DataError(f"{path} was made for other data ({then['train']} training and {then['heldout']} "
                                f"held-out examples then, {data['train']} and {data['heldout']} now, or other "
                                f"labels): the dataset changed since; use a new --workdir")
            return Splits(z["forget"], z["retain"], z["val"], z["test"], bool(z["class_unlearning"])), True
    splits = make_splits(train_labels, heldout_labels, settings, seed)
    save_splits(path, splits, settings, data)
    return splits, False
