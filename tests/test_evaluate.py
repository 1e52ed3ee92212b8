"""evaluate.model_metrics wired to the right splits and models, from hand-made statistics whose right answers
are known by construction (MIA 1.0, RF-JSD 0, JSD 0, the four accuracies)."""

import numpy as np
import pytest

from lotus_jax.evaluate import SplitStats, model_metrics

K = 3


def split(correct, entropy, prob_rows):
    """Statistics of a split: per-example correctness/entropy, per-class softmax sums of the given rows."""
    probs = np.asarray(prob_rows, np.float64)
    labels = np.zeros(len(probs), np.int64)  # every example of class 0
    sums = np.zeros((K, K))
    sums[0] = probs.sum(0)
    counts = np.zeros(K, np.int64)
    counts[0] = len(probs)
    return SplitStats(np.asarray(correct, bool), np.asarray(entropy, np.float64), labels, sums, counts, probs)


def stats(forget_entropy, forget_probs, val_probs, correct=(1, 1, 0, 0)):
    n = len(forget_entropy)
    return {
        "forget": split(correct[:n] if len(correct) >= n else [1] * n, forget_entropy, forget_probs),
        "retain": split([1] * 40, np.random.default_rng(0).normal(0.0, 0.1, 40), [[0.8, 0.1, 0.1]] * 40),
        "val": split([1, 0, 0, 0], np.random.default_rng(1).normal(2.0, 0.1, 4), val_probs),
        "test": split([0, 0, 0, 0], np.random.default_rng(2).normal(2.0, 0.1, 4), [[0.4, 0.3, 0.3]] * 4),
    }


def test_model_metrics_reads_each_split_from_the_right_model():
    # The unlearned model's forget softmax equals (a) the original model's softmax on unseen (val) data and
    # (b) the gold model's forget softmax; its forget entropies (0.8) lie on the member side of the retain (0)
    # vs val+test (2) boundary at 1. So, by construction: RF-JSD 0, JSD 0, MIA 1, and accuracies 2/4, 40/40,
    # 1/4, 0/4. Catches: MIA non-members taken from the forget set (the boundary moves to 0.4: MIA 0); RF-JSD's
    # P taken from the original model's forget set, or its Q from the unlearned model's val split (both != 0);
    # JSD against the original instead of gold; accuracies of swapped splits.
    q = [[0.6, 0.3, 0.1]] * 4
    unlearned = stats([0.8] * 4, q, val_probs=[[0.2, 0.2, 0.6]] * 4)
    original = stats([0.05] * 4, [[0.98, 0.01, 0.01]] * 4, val_probs=q)
    gold = stats([1.5] * 4, q, val_probs=[[0.3, 0.3, 0.4]] * 4)
    m = model_metrics(unlearned, original, gold, form="textbook", rf_unseen="val")
    assert m["mia"] == 1.0
    assert m["rf_jsd"] == pytest.approx(0.0, abs=1e-9) and m["rf_jsd_compat"] == pytest.approx(0.0, abs=1e-9)
    assert m["jsd"] == pytest.approx(0.0, abs=1e-9)
    assert (m["acc_forget"], m["acc_retain"], m["acc_val"], m["acc_test"]) == (0.5, 1.0, 0.25, 0.0)
    # The original model itself is far from its unseen distribution and from gold on the forget set.
    o = model_metrics(original, original, gold, form="textbook", rf_unseen="val")
    assert o["rf_jsd"] > 0.1 and o["jsd"] > 0.1


def test_evaluation_dispatches_the_next_batch_before_fetching_the_previous(monkeypatch):
    # Catches an evaluation loop that brings each batch to the host before dispatching the next one (the device
    # then idles during host work), and one that drops or reorders batches while overlapping.
    from lotus_jax import evaluate

    events = []

    def eval_fn(variables, batch, keep_probs):
        events.append(("dispatch", batch["i"]))
        n = len(batch["mask"])
        return {"i": batch["i"], "correct": np.full(n, batch["i"] % 2 == 0), "entropy": np.full(n, float(batch["i"])),
                "prob_sums": np.zeros((2, 2)), "counts": np.array([n, 0])}

    def to_host(tree):
        events.append(("fetch", tree[0]["i"]))
        return tree

    monkeypatch.setattr(evaluate.sharding, "to_host", to_host)
    batches = [{"i": i, "mask": np.ones(3, bool), "label": np.zeros(3, np.int64)} for i in range(3)]
    stats = evaluate.evaluate_batches(eval_fn, {}, iter(batches), num_classes=2)
    assert events == [("dispatch", 0), ("dispatch", 1), ("fetch", 0), ("dispatch", 2), ("fetch", 1), ("fetch", 2)]
    np.testing.assert_array_equal(stats.entropy, np.repeat([0.0, 1.0, 2.0], 3))
    assert stats.counts.tolist() == [9, 0]
