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


def test_class_balanced_fit_on_imbalanced_overlapping_entropies():
    # Catches the logistic regression fitted without class balancing. CIFAR-like counts: 45,000 members
    # (retain) against 10,000 non-members (val + test), overlapping entropy distributions. With balanced
    # weights the decision threshold lies where the two densities (weighted equally) cross, the midpoint 1.0
    # of N(0.5, 0.5) and N(1.5, 0.5); unbalanced, the 4.5x more numerous members push it to about
    # 1.0 + 0.25 * ln(4.5) = 1.38, so many more forget examples count as members.
    rng = np.random.default_rng(0)
    retain = rng.normal(0.5, 0.5, 45_000)
    unseen = rng.normal(1.5, 0.5, 10_000)
    forget = np.linspace(0.0, 2.0, 2001)  # uniform over [0, 2]: MIA = (threshold - 0) / 2
    value = mia(retain, unseen, forget, seed=0)
    assert abs(value - 0.5) < 0.02, value  # balanced: threshold ≈ 1.0
    unbalanced_threshold = 1.0 + 0.25 * np.log(45_000 / 10_000)
    assert abs(value - unbalanced_threshold / 2) > 0.15
