"""Splits: disjoint, stratified, deterministic per seed, different across seeds; every mode of docs/definitions.md §2;
validation of bad forget settings; reuse from the workdir; separate val and test folders (`data.test_split`)."""

import json

import ml_collections as mlc
import numpy as np
import pytest
from PIL import Image

from lotus_jax.data.sources import DataError, heldout_labels, load_dataset
from lotus_jax.data.splits import (forget_indices, load_ids, load_or_make_splits, make_splits, split_heldout,
                                   split_settings)

LABELS = np.repeat(np.arange(5), [40, 30, 20, 50, 10])
HELDOUT = np.repeat(np.arange(5), [12, 10, 8, 6, 4])
FRACTION = {"mode": "fraction", "sampling": "random", "fraction": 0.1}


def test_fraction_split_is_disjoint_stratified_and_complete():
    s = make_splits(LABELS, HELDOUT, FRACTION, seed=3)
    assert not set(s.forget) & set(s.retain)
    np.testing.assert_array_equal(np.sort(np.concatenate([s.forget, s.retain])), np.arange(len(LABELS)))
    np.testing.assert_array_equal(np.bincount(LABELS[s.forget]), [4, 3, 2, 5, 1])
    assert not set(s.val) & set(s.test)
    np.testing.assert_array_equal(np.sort(np.concatenate([s.val, s.test])), np.arange(len(HELDOUT)))
    np.testing.assert_array_equal(np.bincount(HELDOUT[s.val]), [6, 5, 4, 3, 2])


def test_splits_are_deterministic_per_seed_and_differ_across_seeds():
    a, b = make_splits(LABELS, HELDOUT, FRACTION, 1), make_splits(LABELS, HELDOUT, FRACTION, 1)
    c = make_splits(LABELS, HELDOUT, FRACTION, 2)
    for k in ("forget", "retain", "val", "test"):
        np.testing.assert_array_equal(getattr(a, k), getattr(b, k))
    assert not np.array_equal(a.forget, c.forget)
    assert not np.array_equal(a.val, c.val)


def test_first_sampling_takes_the_first_k_of_each_class_whatever_the_seed():
    settings = dict(FRACTION, sampling="first")
    f = forget_indices(LABELS, settings, seed=1)[0]
    expected = np.concatenate([np.flatnonzero(LABELS == c)[:k] for c, k in enumerate([4, 3, 2, 5, 1])])
    np.testing.assert_array_equal(f, np.sort(expected))
    np.testing.assert_array_equal(f, forget_indices(LABELS, settings, seed=99)[0])


def test_class_unlearning_forgets_every_example_of_the_class():
    s = make_splits(LABELS, HELDOUT, {"mode": "class", "classes": [2]}, 0)
    np.testing.assert_array_equal(s.forget, np.flatnonzero(LABELS == 2))
    assert s.class_unlearning and 2 not in set(LABELS[s.retain])


def test_per_class_protocol_takes_k_forget_and_next_m_retain():
    settings = {"mode": "per_class", "sampling": "first", "per_class": 2, "retain_per_class": 3}
    f, r = forget_indices(LABELS, settings, 0)
    np.testing.assert_array_equal(np.bincount(LABELS[f]), [2] * 5)
    np.testing.assert_array_equal(np.bincount(LABELS[r]), [3] * 5)
    np.testing.assert_array_equal(r[LABELS[r] == 0], [2, 3, 4])


def test_explicit_ids(tmp_path):
    (tmp_path / "ids.txt").write_text("5\n17 3\n")
    f, r = forget_indices(LABELS, {"mode": "ids", "ids_file": str(tmp_path / "ids.txt")}, 0)
    np.testing.assert_array_equal(f, [3, 5, 17])
    assert len(r) == len(LABELS) - 3
    np.save(tmp_path / "ids.npy", np.array([1, 2]))
    np.testing.assert_array_equal(load_ids(str(tmp_path / "ids.npy"), 10), [1, 2])


@pytest.mark.parametrize("content,match", [
    ("", "empty"), ("1\n1\n", "more than once"), ("3\n150\n", "out of range"), ("-1\n", "out of range"),
    ("a b\n", "not a list of integers"),
])
def test_bad_ids_are_refused_with_a_one_line_message(tmp_path, content, match):
    (tmp_path / "ids.txt").write_text(content)
    with pytest.raises(DataError, match=match) as e:
        load_ids(str(tmp_path / "ids.txt"), len(LABELS))
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("settings,match", [
    ({"mode": "fraction", "fraction": 0.0}, "outside"),
    ({"mode": "fraction", "fraction": 1.0}, "outside"),
    ({"mode": "class", "classes": [7]}, "do not exist"),
    ({"mode": "nope"}, "unknown forget mode"),
    ({"mode": "fraction", "fraction": 0.1, "sampling": "last"}, "unknown forget sampling"),
    ({"mode": "ids", "ids_file": "/nonexistent/ids.txt"}, "does not exist"),
    ({"mode": "ids", "ids_file": ""}, "does not exist"),
    ({"mode": "fraction", "fraction": 0.001}, "forget set is empty"),
    ({"mode": "class", "classes": [0, 1, 2, 3, 4]}, "retain set is empty"),
])
def test_bad_settings_are_refused(settings, match):
    with pytest.raises(DataError, match=match):
        forget_indices(LABELS, settings, 0)


def test_heldout_split_is_stratified_half():
    val, test = split_heldout(np.repeat(np.arange(3), 10), seed=0)
    np.testing.assert_array_equal(np.bincount(np.repeat(np.arange(3), 10)[val]), [5, 5, 5])
    assert len(test) == 15


def test_saved_split_is_reused_and_a_different_one_refused(tmp_path):
    path = tmp_path / "splits.npz"
    settings = dict(FRACTION, seed=1)
    a, reused_a = load_or_make_splits(path, LABELS, HELDOUT, settings, 1)
    b, reused_b = load_or_make_splits(path, LABELS, HELDOUT, settings, 1)
    assert (reused_a, reused_b) == (False, True)
    np.testing.assert_array_equal(a.forget, b.forget)
    with np.load(path) as z:
        assert json.loads(str(z["settings"]))["fraction"] == 0.1
    with pytest.raises(DataError, match="different split settings"):
        load_or_make_splits(path, LABELS, HELDOUT, dict(settings, fraction=0.2), 1)


def test_a_saved_split_of_other_data_is_refused(tmp_path):
    # An image folder that gained or lost an image shifts every index of a saved split: the workdir's forget
    # set would silently be other images (or an index would fall off the end). Catches reuse checked by the
    # settings alone; splits saved before the data was recorded are still reused.
    path = tmp_path / "splits.npz"
    settings = dict(FRACTION, seed=1)
    made, _ = load_or_make_splits(path, LABELS, HELDOUT, settings, 1)
    for train, heldout in ((np.append(LABELS, 0), HELDOUT), (LABELS, HELDOUT[:-1]), (np.roll(LABELS, 1), HELDOUT)):
        with pytest.raises(DataError, match="made for other data .* use a new --workdir"):
            load_or_make_splits(path, train, heldout, settings, 1)
    with np.load(path) as z:
        older = {k: z[k] for k in z.files if k != "data"}
    np.savez(path, **older)
    again, reused = load_or_make_splits(path, np.append(LABELS, 0), HELDOUT, settings, 1)
    assert reused
    np.testing.assert_array_equal(again.forget, made.forget)


def test_separate_val_and_test_folders_are_kept_apart_saved_and_reused(tmp_path):
    """data.test_split: val = the val folder, test = the test folder, each held-out example exactly once,
    whatever the seed; the split is saved with its settings and reused."""
    root = tmp_path / "tree"
    for split, n in (("train", 10), ("val", 3), ("test", 5)):
        for c, cls in enumerate(("old", "young")):
            (root / split / cls).mkdir(parents=True)
            for i in range(n + c):
                Image.fromarray(np.full((4, 4, 3), 10 * c + i, np.uint8)).save(root / split / cls / f"{i}.png")
    cfg = mlc.ConfigDict(dict(source="folder", path=str(root), train_split="train", heldout_split="val",
                              test_split="test", val_fraction=0.5, forget=dict(mode="fraction", fraction=0.2)))
    ds = load_dataset(cfg)
    settings = split_settings(cfg, 5)
    assert settings["test_split"] == "test" and settings["heldout_split"] == "val" and "val_fraction" not in settings
    path = tmp_path / "splits.npz"
    s, reused = load_or_make_splits(path, ds.train.labels, ds.heldout.labels, settings, 5)
    n_val = 3 + 4
    assert not reused and s.sizes() == {"forget": 4, "retain": 17, "val": n_val, "test": 5 + 6}
    np.testing.assert_array_equal(s.val, np.arange(n_val))
    np.testing.assert_array_equal(s.test, np.arange(n_val, len(ds.heldout)))
    assert {ds.heldout.describe(int(i)).split("/")[0] for i in s.val} == {"val"}  # paths relative to the tree
    assert {ds.heldout.describe(int(i)).split("/")[0] for i in s.test} == {"test"}
    other_seed = make_splits(ds.train.labels, ds.heldout.labels, dict(settings, seed=6), 6)
    np.testing.assert_array_equal(other_seed.val, s.val)  # not drawn: the folders decide
    again, reused = load_or_make_splits(path, ds.train.labels, ds.heldout.labels, settings, 5)
    assert reused
    for k in ("forget", "retain", "val", "test"):
        np.testing.assert_array_equal(getattr(again, k), getattr(s, k))
    with pytest.raises(DataError, match="different split settings"):  # same workdir, halved held-out: refused
        load_or_make_splits(path, ds.train.labels, ds.heldout.labels, split_settings(_without_test_split(cfg), 5), 5)
    # The boundary and the settings must agree.
    with pytest.raises(DataError, match="exactly when data.test_split is set"):
        make_splits(LABELS, heldout_labels(HELDOUT, 10), FRACTION, 0)
    with pytest.raises(DataError, match="exactly when data.test_split is set"):
        make_splits(LABELS, HELDOUT, dict(FRACTION, test_split="test"), 0)


def _without_test_split(cfg):
    out = cfg.copy_and_resolve_references()
    out.test_split = None
    return out


def test_split_heldout_with_a_val_size_takes_the_leading_examples():
    val, test = split_heldout(HELDOUT, seed=0, val_size=12)
    np.testing.assert_array_equal(val, np.arange(12))
    np.testing.assert_array_equal(test, np.arange(12, len(HELDOUT)))
    with pytest.raises(DataError, match="must both hold images"):
        split_heldout(HELDOUT, seed=0, val_size=len(HELDOUT))
