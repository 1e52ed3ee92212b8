"""Forgetting audit: logit confidence, challenge epsilon / forget score / final score, U-LiRA."""
import json
import math

import numpy as np
import pytest

from lotus_jax.metrics.audit import (
    audit_summary,
    final_score,
    forget_score,
    leave_one_out_gaussian,
    logit_confidence,
    per_example_epsilon,
    threshold_grid,
    tpr_at_fpr,
    ulira,
)

DELTA = 1e-5


def gaussian_populations(shift: float, n_models: int, n_examples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(0.0, 3.0, n_examples)
    s_r = centres + rng.normal(size=(n_models, n_examples))
    s_u = centres + shift + rng.normal(size=(n_models, n_examples))
    return s_u, s_r


def brute_force_epsilon(u: np.ndarray, r: np.ndarray, u_on_ties: bool = True) -> float:
    """Every grid threshold t and every grid pair l <= r, rates by direct comparison, scalar epsilon formula.
    `u_on_ties=False`: R is the positive population when the medians tie (the wrong rule, for a test)."""
    if np.ptp(u) < 0.01 * np.ptp(r) or np.ptp(r) < 0.01 * np.ptp(u):
        return 50.0
    grid = threshold_grid(min(u.min(), r.min()), max(u.max(), r.max()))
    u_positive = np.median(u) > np.median(r) or (np.median(u) == np.median(r) and u_on_ties)
    pos, neg = (u, r) if u_positive else (r, u)
    narrow, wide = (u, r) if np.std(u) <= np.std(r) else (r, u)
    rates = [(np.mean(neg >= t), np.mean(pos < t)) for t in grid]
    for i, lo in enumerate(grid):
        for hi in grid[i:]:
            rates.append((np.mean((wide >= lo) & (wide <= hi)), np.mean((narrow < lo) | (narrow > hi))))
    best = 0.0
    for fpr, fnr in rates:
        if fpr == 0 and fnr == 0:
            return 50.0
        if fpr == 0 or fnr == 0:
            continue
        terms = [math.log(1 - DELTA - a) - math.log(b) for a, b in ((fpr, fnr), (fnr, fpr)) if 1 - DELTA - a > 0]
        if not terms:
            return 50.0
        best = max(best, *terms)
    return min(best, 50.0)


def test_logit_confidence_stable_at_extremes():
    # Catches: softmax first, then log p - log(1 - p) (inf / NaN at p = 1 in float32, wrong at p ~ 1e-44).
    logits = np.array([[100.0, 0.0], [-100.0, 0.0], [0.0, 800.0], [800.0, 800.0]], np.float32)
    got = logit_confidence(logits, np.array([0, 0, 0, 1]))
    np.testing.assert_allclose(got, [100.0, -100.0, -800.0, 0.0], rtol=0, atol=1e-12)
    three = logit_confidence(np.array([0.0, 900.0, 900.0]), np.array(0))
    assert three == pytest.approx(-900.0 - math.log(2.0), abs=1e-12)


def test_logit_confidence_matches_float64_reference():
    # Catches: float32 arithmetic, or logsumexp over all classes instead of j != y.
    rng = np.random.default_rng(1)
    logits = rng.normal(0.0, 2.0, (3, 7, 10))
    labels = rng.integers(0, 10, (3, 7))
    z = logits - logits.max(-1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
    p_y = np.take_along_axis(p, labels[..., None], -1)[..., 0]
    np.testing.assert_allclose(logit_confidence(logits, labels), np.log(p_y) - np.log(1 - p_y), rtol=1e-10)


def test_hand_computed_epsilon_needs_the_double_threshold():
    # Catches: no double thresholds or the band predicting the wider population (both ln 2), delta dropped (ln 3).
    # U = {0, 1, 5, 6}, R = {2, 3, 4, 8}: medians 3 < 3.5, so "R iff s >= t"; sorted U U R R R U U R.
    # Best single threshold, t in (2, 3]: FNR = 1/4 (R 2), FPR = 2/4 (U 5, 6) -> log(0.5 - d) - log(0.25) = ln 2.
    # Std: U var 26/4 = 6.5 > R var 20.75/4, so the band predicts R. [2, 5]: R 8 outside (FNR 1/4), U 5 inside
    # (FPR 1/4) -> log(0.75 - d) - log(0.25); [2, 4] has FPR 0 and is discarded. With rates in quarters no
    # admissible rule beats this, so eps = log(0.75 - 1e-5) - log(0.25) = log(3 - 4e-5).
    eps = per_example_epsilon(np.array([0.0, 1.0, 5.0, 6.0]), np.array([2.0, 3.0, 4.0, 8.0]))
    assert eps[0] == pytest.approx(math.log(0.75 - DELTA) - math.log(0.25), rel=1e-12)


def small_case(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """3 examples, 3-6 models per side, overlapping; gaps below the grid step, and on odd seeds half the values
    snapped onto the example's grid so that data sit exactly on thresholds (ties included)."""
    rng = np.random.default_rng(seed)
    n_u, n_r = rng.integers(3, 7, 2)
    scale = [0.004, 0.02, 0.08][seed % 3]
    u = rng.normal(0.0, scale, (n_u, 3)) + rng.normal(0.0, scale, 3)
    r = rng.normal(0.0, scale * rng.uniform(0.5, 2.0), (n_r, 3))
    if seed % 2:
        both = np.concatenate([u, r])
        for i in range(3):
            grid = threshold_grid(both[:, i].min(), both[:, i].max())
            snap = rng.random(len(both)) < 0.5
            both[snap, i] = grid[np.abs(grid[:, None] - both[snap, i]).argmin(0)]
        u, r = both[:n_u], both[n_u:]
    return u, r


@pytest.mark.parametrize("seed", range(40))
def test_fast_epsilon_equals_brute_force_grid(seed):
    # Catches: thresholds at the data instead of the grid, the single rule pointed at the smaller median
    # (seen only when data sit on grid points), swapped log terms, any error in the rank-pair bookkeeping.
    u, r = small_case(seed)
    want = [brute_force_epsilon(u[:, i], r[:, i]) for i in range(3)]
    np.testing.assert_allclose(per_example_epsilon(u, r), want, rtol=1e-12, atol=1e-12)


def test_equal_medians_make_u_the_positive_population():
    # Medians tie at .02. With U positive no single threshold beats chance (eps 0); pointed at R, the rule
    # "R iff s >= .03" has FPR 1/5, FNR 3/5 and scores ln 2. Catches `>` where the definition says U on ties.
    u = np.array([0.01, 0.03, 0.02, 0.01, 0.02])
    r = np.array([0.01, 0.03, 0.01, 0.02, 0.03])
    assert np.median(u) == np.median(r)
    assert per_example_epsilon(u, r)[0] == brute_force_epsilon(u, r) == 0.0
    assert brute_force_epsilon(u, r, u_on_ties=False) == pytest.approx(math.log(0.4 - DELTA) - math.log(0.2), rel=1e-12)


def test_brute_force_cases_are_not_degenerate():
    eps = np.concatenate([per_example_epsilon(*small_case(seed)) for seed in range(40)])
    assert np.sum((eps > 0) & (eps < 50)) >= 40


def test_point_mass_gives_cap():
    # U sits on (or within 1e-4 of) one retrained model's value, so no grid rule isolates it: without the
    # point-mass rule eps is 0 (a point mass between R values would be cut out by a band anyway).
    rng = np.random.default_rng(2)
    r = rng.normal(1.0, 1.0, (16, 2))
    u = np.stack([np.full(16, r[3, 0]), r[3, 1] + 1e-4 * rng.normal(size=16)], axis=1)
    np.testing.assert_array_equal(per_example_epsilon(u, r), [50.0, 50.0])
    np.testing.assert_array_equal(per_example_epsilon(r, u), [50.0, 50.0])


def test_threshold_grid_spacing_and_ends():
    # Catches: a coarser step, one point too few, ends not on the data's min and max.
    grid = threshold_grid(0.0, 1.0)
    assert grid.size == 101 and grid[0] == 0.0 and grid[-1] == 1.0 and np.max(np.diff(grid)) <= 0.01 + 1e-15
    np.testing.assert_allclose(threshold_grid(0.0, 0.015), [0.0, 0.0075, 0.015], rtol=0, atol=1e-15)
    np.testing.assert_array_equal(threshold_grid(2.0, 2.0), [2.0])


def test_grid_too_coarse_to_separate():
    # U = {0, .002}, R = {.007, .009}: separable by a threshold at .005, but the grid over [0, .009] is {0, .009}
    # (spacing <= .01): no grid rule separates them, so eps stays finite. Catches thresholds at the data or a
    # finer grid (both give the cap).
    u, r = np.array([0.0, 0.002]), np.array([0.007, 0.009])
    assert per_example_epsilon(u, r)[0] < 50.0
    assert per_example_epsilon(u, r, step=0.001)[0] == 50.0


@pytest.mark.parametrize(("ratio", "capped"), [(0.02, False), (0.005, True)])
def test_point_mass_rule_cuts_at_one_percent_of_the_range(ratio, capped):
    # R = {0, 1, 2, 3} (range 3); U spread over ratio * 3 around R's value 1, so every band that holds all of U
    # also holds that R model (FPR 1/4, FNR 0: discarded) and eps stays finite unless the point-mass rule caps
    # it. Catches a cut-off of 10% (ratio .02 capped) or none (ratio .005 finite).
    r = np.array([0.0, 1.0, 2.0, 3.0])
    u = 1.0 + ratio * 3.0 * np.array([-0.5, 0.0, 0.5, 0.25])
    eps = per_example_epsilon(u, r)[0]
    assert eps == brute_force_epsilon(u, r)
    assert (eps == 50.0) == capped
    assert capped or eps < 5.0


def test_two_point_masses():
    np.testing.assert_array_equal(per_example_epsilon(np.full((4, 1), 2.0), np.full((4, 1), 2.0)), [0.0])
    np.testing.assert_array_equal(per_example_epsilon(np.full((4, 1), 2.0), np.full((4, 1), 3.0)), [50.0])


def test_perfect_separation_gives_cap():
    # Catches: FPR = FNR = 0 discarded like a one-zero rule (and NaN terms ignored), which gives 0.
    rng = np.random.default_rng(3)
    u = rng.normal(0.0, 0.3, (8, 5))
    r = rng.normal(5.0, 0.3, (8, 5))
    np.testing.assert_array_equal(per_example_epsilon(u, r), np.full(5, 50.0))


def test_forget_score_falls_with_shift():
    # Catches: points rising with the bucket (2^(k - B) instead of 2^-k).
    scores = [forget_score(per_example_epsilon(*gaussian_populations(shift, 32, 200, 4)), 32) for shift in (0, 1, 3)]
    assert scores[0] > scores[1] > scores[2]


def test_forget_score_buckets_by_hand():
    # Catches: ln(N - 1) not rounded up (3.53 would earn 0), off-by-one bucket points.
    # N = 32: ceil(ln 31) = 4, buckets [0, 0.5), ..., [3.5, 4).
    # eps 0 -> 1, 0.49 -> 1, 0.5 -> 1/2, 1.2 -> 1/4, ln 31 + 0.1 = 3.53 -> 1/128, 4.0 -> 0, 50 -> 0.
    eps = np.array([0.0, 0.49, 0.5, 1.2, math.log(31) + 0.1, 4.0, 50.0])
    assert forget_score(eps, 32) == pytest.approx((1 + 1 + 0.5 + 0.25 + 1 / 128) / 7, rel=1e-15)
    assert forget_score(np.array([0.0, 1.0]), 2) == 0.0  # ln 1 = 0: no bucket at all


def test_final_score_by_hand():
    # Catches: an inverted accuracy ratio (0.8 x 1.25 = 1.0).
    # retain 0.85 / 0.85 = 1, test 0.6 / 0.75 = 0.8 -> 0.8 x 1 x 0.8 = 0.64
    got = final_score(0.8, np.array([0.9, 0.8]), np.array([0.85]), 0.6, np.array([0.8, 0.7]))
    assert got == pytest.approx(0.64, rel=1e-12)


def test_leave_one_out_gaussian_equals_refit():
    # Catches: the closed form without the n / (n - 1) factor on d_i^2; offset 1e3 guards cancellation.
    x = 1e3 + np.random.default_rng(5).normal(size=(6, 4))
    mean, sd = leave_one_out_gaussian(x)
    for i in range(6):
        rest = np.delete(x, i, axis=0)
        np.testing.assert_allclose(mean[i], rest.mean(0), rtol=1e-13)
        np.testing.assert_allclose(sd[i], rest.std(0), rtol=1e-9)


def test_ulira_scores_equal_explicit_refit():
    # Catches: no leave-one-out, a flipped score sign, ddof = 1 fits.
    rng = np.random.default_rng(6)
    u, r = rng.normal(0.5, 1.0, (5, 3)), rng.normal(size=(4, 3))
    result = ulira(u, r)

    def log_ratio(s, fit_u, fit_r):
        return (-np.log(fit_u.std(0)) - 0.5 * ((s - fit_u.mean(0)) / fit_u.std(0)) ** 2) - (
            -np.log(fit_r.std(0)) - 0.5 * ((s - fit_r.mean(0)) / fit_r.std(0)) ** 2
        )

    for i in range(5):
        np.testing.assert_allclose(result.scores_u[i], log_ratio(u[i], np.delete(u, i, 0), r), rtol=1e-10)
    for j in range(4):
        np.testing.assert_allclose(result.scores_r[j], log_ratio(r[j], u, np.delete(r, j, 0)), rtol=1e-10)


def test_ulira_identical_populations_auc_near_half():
    # 16 + 16 targets x 200 examples; over 60 seeds the AUC had mean 0.498 and s.d. 0.011 (the independent
    # Mann-Whitney s.e. is 0.007, target scores of one example are correlated); 0.05 is ~4.5 s.d.
    # Fitting the target's own population without leaving it out gives ~0.625 here.
    result = ulira(*gaussian_populations(0.0, 16, 200, 7))
    assert abs(result.auc - 0.5) < 0.05
    assert abs(np.mean(result.example_accuracy) - 0.5) < 0.05


def test_ulira_separated_populations_auc_near_one():
    # Catches: a flipped score sign (AUC ~ 0).
    result = ulira(*gaussian_populations(3.0, 16, 200, 8))
    assert result.auc > 0.95
    assert result.balanced_accuracy > 0.9
    assert np.mean(result.example_accuracy) > 0.9


def test_ulira_point_mass_is_finite():
    # Catches: no floor (inf), a floor relative to |mean| or of another size: a U target of a point mass at 3
    # scores -log(1e-6) under U (its leave-one-out fit is the same point) minus its log-density under R.
    rng = np.random.default_rng(9)
    r = rng.normal(size=(8, 3))
    result = ulira(np.full((8, 3), 3.0), r)
    assert np.all(np.isfinite(result.scores_u)) and np.all(np.isfinite(result.scores_r))
    under_r = -np.log(r.std(0)) - 0.5 * ((3.0 - r.mean(0)) / r.std(0)) ** 2
    np.testing.assert_allclose(result.scores_u, np.broadcast_to(-np.log(1e-6) - under_r, (8, 3)), rtol=1e-12)


def test_ulira_summary_numbers_from_the_scores():
    # The ROC summaries recomputed from the pooled target scores without sklearn: AUC as the Mann-Whitney
    # probability, the best balanced accuracy and the TPR at FPR <= 1% / 0.1% over every threshold.
    # Catches: balanced accuracy without the / 2 or at one threshold, swapped or wrong FPR levels.
    result = ulira(*gaussian_populations(1.0, 16, 100, 11))
    su, sr = result.scores_u.ravel(), result.scores_r.ravel()
    greater = np.mean(su[:, None] > sr[None, :]) + 0.5 * np.mean(su[:, None] == sr[None, :])
    assert result.auc == pytest.approx(greater, abs=1e-12)
    thresholds = np.concatenate([np.unique(np.concatenate([su, sr])), [np.inf]])
    tpr = np.mean(su[None, :] >= thresholds[:, None], axis=1)
    fpr = np.mean(sr[None, :] >= thresholds[:, None], axis=1)
    assert result.balanced_accuracy == pytest.approx(np.max((tpr + 1 - fpr) / 2), abs=1e-12)
    assert result.tpr_at_1pct_fpr == pytest.approx(np.max(tpr[fpr <= 0.01]), abs=1e-12)
    assert result.tpr_at_01pct_fpr == pytest.approx(np.max(tpr[fpr <= 0.001]), abs=1e-12)
    assert 0.0 < result.tpr_at_01pct_fpr < result.tpr_at_1pct_fpr < 1.0  # the case separates the two levels


def test_tpr_at_fpr_by_hand():
    # Catches: FPR < x instead of FPR <= x.
    fpr = np.array([0.0, 0.0, 0.0005, 0.005, 0.01, 0.02, 1.0])
    tpr = np.array([0.0, 0.2, 0.25, 0.3, 0.5, 0.9, 1.0])
    assert tpr_at_fpr(fpr, tpr, 0.01) == 0.5
    assert tpr_at_fpr(fpr, tpr, 0.001) == 0.25


def test_audit_summary_layout():
    # 8 unlearned and 12 retrained models: catches a bucket count from N_r or max(N) (the eps here score
    # differently with 6 buckets than with 4), and summary fields taken from the wrong function or side.
    rng = np.random.default_rng(10)
    centres = rng.normal(0.0, 3.0, 60)
    s_u, s_r = centres + 0.5 + rng.normal(size=(8, 60)), centres + rng.normal(size=(12, 60))
    summary = audit_summary(s_u, s_r, [0.9, 0.8], 0.85, 0.6, [0.8, 0.7])
    scalars, arrays = summary["scalars"], summary["arrays"]
    json.dumps(scalars)
    eps = per_example_epsilon(s_u, s_r)
    assert forget_score(eps, 8) != forget_score(eps, 12)
    assert scalars["forget_score"] == forget_score(eps, 8) and scalars["mean_epsilon"] == np.mean(eps)
    assert (scalars["n_models_u"], scalars["n_models_r"], scalars["n_examples"]) == (8, 12, 60)
    attack = ulira(s_u, s_r)
    assert scalars["ulira_auc"] == attack.auc and scalars["ulira_tpr_at_1pct_fpr"] == attack.tpr_at_1pct_fpr
    assert scalars["ulira_balanced_accuracy"] == attack.balanced_accuracy
    assert scalars["ulira_tpr_at_01pct_fpr"] == attack.tpr_at_01pct_fpr
    assert scalars["final_score"] == pytest.approx(scalars["forget_score"] * 0.8, rel=1e-12)
    assert arrays["epsilon"].shape == arrays["ulira_example_accuracy"].shape == (60,)
    assert arrays["ulira_roc_fpr"].shape == arrays["ulira_roc_tpr"].shape


def test_rejects_mismatched_or_non_finite_inputs():
    with pytest.raises(ValueError, match="expected"):
        per_example_epsilon(np.zeros((4, 3)), np.zeros((4, 2)))
    with pytest.raises(ValueError, match="non-finite"):
        ulira(np.full((4, 2), np.nan), np.zeros((4, 2)))
