"""MIA on entropies: separable and mixed cases, input validation."""
import numpy as np
import pytest

from lotus_jax.metrics import mia

RNG = np.random.default_rng(0)
RETAIN = RNG.uniform(0.0, 0.2, 200)  # members: confident, low entropy
UNSEEN = RNG.uniform(2.0, 2.5, 40)  # non-members: high entropy (imbalanced on purpose)


def test_forget_like_retain_is_all_members():
    assert mia(RETAIN, UNSEEN, RNG.uniform(0.0, 0.2, 30)) == 1.0


def test_forget_like_unseen_is_no_members():
    assert mia(RETAIN, UNSEEN, RNG.uniform(2.0, 2.5, 30)) == 0.0


def test_mixed_forget_fraction():
    # 3 of 8 forget examples sit in the member cluster, 5 in the non-member cluster.
    forget = np.array([0.05, 0.1, 0.15, 2.1, 2.2, 2.3, 2.4, 2.45])
    assert mia(RETAIN, UNSEEN, forget) == pytest.approx(3 / 8)


def test_accepts_column_vectors_and_float32():
    got = mia(RETAIN[:, None].astype(np.float32), UNSEEN[:, None], np.array([[0.1], [2.2]]))
    assert got == pytest.approx(0.5)


@pytest.mark.parametrize("which", ["retain", "unseen", "forget"])
def test_empty_input_raises(which):
    args = {"retain": RETAIN, "unseen": UNSEEN, "forget": RETAIN[:3]}
    args[which] = np.array([])
    with pytest.raises(ValueError, match=which):
        mia(args["retain"], args["unseen"], args["forget"])
