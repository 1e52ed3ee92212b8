"""Per-example forgetting audit: the NeurIPS 2023 unlearning-challenge epsilon / forget score and U-LiRA.

Inputs are logit-scaled confidences ``s`` of N_u unlearned (U) and N_r retrained (R) models on the same
forget examples, as (N_u, n) and (N_r, n) arrays; all arithmetic is float64 numpy on the host.
Small-sample bias: with N models per side even identical populations give epsilons well above 0 (the best of
many threshold rules fits the noise), so F stays far below 1 for a perfect method; compare methods at equal N.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

DELTA = 1e-5
EPSILON_CAP = 50.0
GRID_STEP = 0.01
POINT_MASS_RATIO = 0.01
BUCKET_WIDTH = 0.5
SD_FLOOR = 1e-6


def logit_confidence(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """s = log p_y - log sum_{j != y} p_j = z_y - logsumexp_{j != y} z_j, float64, finite for p_y near 0 or 1.

    logits (..., K) with K >= 2, labels (...) integer; returns (...).
    """
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels).astype(np.int64)
    if z.ndim < 1 or z.shape[-1] < 2:
        raise ValueError(f"logits need a class axis of size >= 2; got shape {z.shape}")
    if z.shape[:-1] != y.shape:
        raise ValueError(f"labels shape {y.shape} does not match logits shape {z.shape}")
    if np.any((y < 0) | (y >= z.shape[-1])):
        raise ValueError(f"labels must lie in [0, {z.shape[-1]})")
    z_y = np.take_along_axis(z, y[..., None], axis=-1)[..., 0]
    is_label = np.arange(z.shape[-1]) == y[..., None]
    others = np.where(is_label, -np.inf, z)
    top = others.max(axis=-1)
    lse = top + np.log(np.sum(np.exp(others - top[..., None]), axis=-1))
    return z_y - lse


def _populations(s_u: np.ndarray, s_r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    u = np.asarray(s_u, dtype=np.float64)
    r = np.asarray(s_r, dtype=np.float64)
    if u.ndim == 1:
        u = u[:, None]
    if r.ndim == 1:
        r = r[:, None]
    if u.ndim != 2 or r.ndim != 2 or u.shape[1] != r.shape[1]:
        raise ValueError(f"expected (N_u, n) and (N_r, n) arrays; got {u.shape} and {r.shape}")
    if u.shape[0] < 2 or r.shape[0] < 2:
        raise ValueError(f"need at least 2 models per population; got {u.shape[0]} and {r.shape[0]}")
    if not (np.all(np.isfinite(u)) and np.all(np.isfinite(r))):
        raise ValueError("confidences contain non-finite values")
    return u, r


def threshold_grid(lo: float, hi: float, step: float = GRID_STEP) -> np.ndarray:
    """Attack thresholds: linspace(lo, hi, ceil((hi - lo) / step) + 1), both ends included, spacing <= step."""
    return np.linspace(lo, hi, int(math.ceil((hi - lo) / step)) + 1)


def _max_rule_epsilon(fp: np.ndarray, fn: np.ndarray, n_neg: int, n_pos: int, delta: float) -> float:
    """max(0, max over rules of max(log(1 - delta - FPR) - log FNR, log(1 - delta - FNR) - log FPR)).

    From integer counts: FP = FN = 0 is perfect separation (inf); exactly one of them 0 is discarded; a term
    whose log argument is <= 0 (a rate of 1) is dropped, and FPR = FNR = 1 (a perfectly inverted rule) is inf.
    """
    if np.any((fp == 0) & (fn == 0)):
        return math.inf
    keep = (fp > 0) & (fn > 0)
    fpr, fnr = fp[keep] / n_neg, fn[keep] / n_pos
    a, b = 1.0 - delta - fpr, 1.0 - delta - fnr
    if np.any((a <= 0) & (b <= 0)):
        return math.inf
    with np.errstate(divide="ignore", invalid="ignore"):
        e1 = np.where(a > 0, np.log(np.where(a > 0, a, 1.0)) - np.log(fnr), -np.inf)
        e2 = np.where(b > 0, np.log(np.where(b > 0, b, 1.0)) - np.log(fpr), -np.inf)
    return max(0.0, float(np.max(e1, initial=0.0)), float(np.max(e2, initial=0.0)))


def _example_epsilon(u: np.ndarray, r: np.ndarray, delta: float, step: float) -> float:
    """Uncapped epsilon of one example (see ``per_example_epsilon``)."""
    spread_u, spread_r = np.ptp(u), np.ptp(r)
    if spread_u < POINT_MASS_RATIO * spread_r or spread_r < POINT_MASS_RATIO * spread_u:
        return math.inf
    values = np.concatenate([u, r])
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    cum_u = np.concatenate([[0], np.cumsum(order < u.size)])
    cum_r = np.arange(values.size + 1) - cum_u
    grid = threshold_grid(ordered[0], ordered[-1], step)
    below = np.searchsorted(ordered, grid, side="left")
    at_or_below = np.searchsorted(ordered, grid, side="right")

    u_positive = np.median(u) >= np.median(r)
    cum_pos, n_pos, cum_neg, n_neg = (cum_u, u.size, cum_r, r.size) if u_positive else (cum_r, r.size, cum_u, u.size)
    k = np.unique(below)
    best = _max_rule_epsilon(n_neg - cum_neg[k], cum_pos[k], n_neg, n_pos, delta)
    if math.isinf(best):
        return best

    u_narrow = np.std(u) <= np.std(r)
    cum_in, n_in, cum_out, n_out = (cum_u, u.size, cum_r, r.size) if u_narrow else (cum_r, r.size, cum_u, u.size)
    lows, low_first = np.unique(below, return_index=True)
    highs, high_from_end = np.unique(at_or_below[::-1], return_index=True)
    pairs = (grid.size - 1 - high_from_end)[None, :] >= low_first[:, None]
    inside_in = (cum_in[highs][None, :] - cum_in[lows][:, None])[pairs]
    inside_out = (cum_out[highs][None, :] - cum_out[lows][:, None])[pairs]
    return max(best, _max_rule_epsilon(inside_out, n_in - inside_in, n_out, n_in, delta))


def per_example_epsilon(
    s_u: np.ndarray,
    s_r: np.ndarray,
    delta: float = DELTA,
    cap: float = EPSILON_CAP,
    step: float = GRID_STEP,
) -> np.ndarray:
    """Challenge epsilon per forget example, (N_u, n) x (N_r, n) -> (n,), in [0, cap].

    eps = min(cap, max over threshold rules of the rule epsilon (``_max_rule_epsilon``)); cap when one
    population's range is below 1% of the other's. Rules use thresholds on ``threshold_grid`` over the joint
    [min, max]: "positive (larger median, U on ties) iff s >= t" and "narrower population (smaller std, U on
    ties) iff l <= s <= r", l <= r. Rates depend on a threshold t only through #{s < t} (and #{s <= r}), so
    each grid point is mapped to that rank with searchsorted and only the distinct ranks are scored; a pair
    of ranks (a, b) is admissible when some grid l with rank a precedes some grid r with rank b. This equals
    the full grid enumeration at O(G log N + N^2) per example instead of O(G^2) for G grid points.
    """
    u, r = _populations(s_u, s_r)
    eps = np.array([_example_epsilon(u[:, i], r[:, i], delta, step) for i in range(u.shape[1])])
    return np.minimum(eps, cap)


def forget_score(eps: np.ndarray, n_models: int) -> float:
    """F = mean_i points(eps_i); points = 2^-k for k = floor(eps / 0.5) < 2 ceil(ln(N - 1)) buckets, else 0."""
    if n_models < 2:
        raise ValueError(f"n_models must be >= 2; got {n_models}")
    e = np.asarray(eps, dtype=np.float64).reshape(-1)
    if e.size == 0 or np.any(np.isnan(e)) or np.any(e < 0):
        raise ValueError("eps must be a non-empty array of non-negative values")
    n_buckets = 2 * math.ceil(math.log(n_models - 1))
    k = np.floor(e / BUCKET_WIDTH)
    points = np.where(k < n_buckets, np.exp2(-np.minimum(k, n_buckets)), 0.0)
    return float(np.mean(points))


def final_score(
    forget: float,
    retain_acc_u: np.ndarray | float,
    retain_acc_r: np.ndarray | float,
    test_acc_u: np.ndarray | float,
    test_acc_r: np.ndarray | float,
) -> float:
    """F x mean(retain acc U) / mean(retain acc R) x mean(test acc U) / mean(test acc R)."""
    accs = (retain_acc_u, retain_acc_r, test_acc_u, test_acc_r)
    means = [float(np.mean(np.asarray(a, dtype=np.float64))) for a in accs]
    if means[1] <= 0 or means[3] <= 0:
        raise ValueError("the retrained models' mean retain and test accuracies must be positive")
    return float(forget) * (means[0] / means[1]) * (means[2] / means[3])


def leave_one_out_gaussian(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and sd (MLE, ddof = 0) of x without row i, for every i: (n, ...) -> two (n, ...) arrays.

    With d_i = x_i - mean: mean_{-i} = mean - d_i / (n - 1), var_{-i} = (sum d^2 - n d_i^2 / (n - 1)) / (n - 1).
    """
    x = np.asarray(x, dtype=np.float64)
    n = x.shape[0]
    if n < 2:
        raise ValueError(f"leave-one-out needs at least 2 rows; got {n}")
    d = x - x.mean(axis=0)
    mean = x.mean(axis=0) - d / (n - 1)
    var = np.maximum(np.sum(d * d, axis=0) - n * d * d / (n - 1), 0.0) / (n - 1)
    return mean, np.sqrt(var)


def _log_normal(x: np.ndarray, mean: np.ndarray, sd: np.ndarray) -> np.ndarray:
    return -np.log(sd) - 0.5 * ((x - mean) / sd) ** 2


def tpr_at_fpr(fpr: np.ndarray, tpr: np.ndarray, max_fpr: float) -> float:
    """Largest TPR among ROC points with FPR <= max_fpr."""
    ok = np.asarray(fpr) <= max_fpr
    return float(np.max(np.asarray(tpr)[ok], initial=0.0))


@dataclass(frozen=True)
class ULiRAResult:
    """U-LiRA leave-one-model-out results; scores are positive for "unlearned"."""

    scores_u: np.ndarray
    scores_r: np.ndarray
    example_accuracy: np.ndarray
    auc: float
    balanced_accuracy: float
    tpr_at_1pct_fpr: float
    tpr_at_01pct_fpr: float
    fpr: np.ndarray
    tpr: np.ndarray


def ulira(s_u: np.ndarray, s_r: np.ndarray, sd_floor: float = SD_FLOOR) -> ULiRAResult:
    """U-LiRA with every one of the N_u + N_r models as target, Gaussians fitted on the other models.

    score = log N(s; mu_U, sd_U) - log N(s; mu_R, sd_R) (MLE fits, the target's own population leave-one-out,
    sd = max(sd, sd_floor) absolute so point masses stay finite). Per example: accuracy of "U iff score > 0"
    over the targets. Pooled over (target, example) with label 1 for U: ROC (sklearn, all points kept), AUC,
    the best balanced accuracy (tpr + 1 - fpr) / 2, and TPR at FPR <= 1% and 0.1%.
    """
    u, r = _populations(s_u, s_r)
    mean_u, sd_u = u.mean(axis=0), np.maximum(u.std(axis=0), sd_floor)
    mean_r, sd_r = r.mean(axis=0), np.maximum(r.std(axis=0), sd_floor)
    loo_mean_u, loo_sd_u = leave_one_out_gaussian(u)
    loo_mean_r, loo_sd_r = leave_one_out_gaussian(r)
    scores_u = _log_normal(u, loo_mean_u, np.maximum(loo_sd_u, sd_floor)) - _log_normal(u, mean_r, sd_r)
    scores_r = _log_normal(r, mean_u, sd_u) - _log_normal(r, loo_mean_r, np.maximum(loo_sd_r, sd_floor))
    correct = np.sum(scores_u > 0, axis=0) + np.sum(scores_r <= 0, axis=0)
    example_accuracy = correct / (u.shape[0] + r.shape[0])

    from sklearn.metrics import auc, roc_curve  # here: importing sklearn takes 0.9 s of every CLI start

    labels = np.concatenate([np.ones(scores_u.size), np.zeros(scores_r.size)])
    fpr, tpr, _ = roc_curve(labels, np.concatenate([scores_u.ravel(), scores_r.ravel()]), drop_intermediate=False)
    return ULiRAResult(
        scores_u=scores_u,
        scores_r=scores_r,
        example_accuracy=example_accuracy,
        auc=float(auc(fpr, tpr)),
        balanced_accuracy=float(np.max(0.5 * (tpr + 1.0 - fpr))),
        tpr_at_1pct_fpr=tpr_at_fpr(fpr, tpr, 0.01),
        tpr_at_01pct_fpr=tpr_at_fpr(fpr, tpr, 0.001),
        fpr=fpr,
        tpr=tpr,
    )


def audit_summary(
    s_u: np.ndarray,
    s_r: np.ndarray,
    retain_acc_u: np.ndarray | float,
    retain_acc_r: np.ndarray | float,
    test_acc_u: np.ndarray | float,
    test_acc_r: np.ndarray | float,
) -> dict[str, dict]:
    """{"scalars": JSON-able floats/ints, "arrays": numpy arrays} of the whole audit.

    The forget score's bucket count uses N = min(N_u, N_r).
    """
    u, r = _populations(s_u, s_r)
    eps = per_example_epsilon(u, r)
    forget = forget_score(eps, min(u.shape[0], r.shape[0]))
    attack = ulira(u, r)
    scalars = {
        "n_models_u": int(u.shape[0]),
        "n_models_r": int(r.shape[0]),
        "n_examples": int(u.shape[1]),
        "mean_epsilon": float(np.mean(eps)),
        "forget_score": forget,
        "final_score": final_score(forget, retain_acc_u, retain_acc_r, test_acc_u, test_acc_r),
        "ulira_auc": attack.auc,
        "ulira_balanced_accuracy": attack.balanced_accuracy,
        "ulira_tpr_at_1pct_fpr": attack.tpr_at_1pct_fpr,
        "ulira_tpr_at_01pct_fpr": attack.tpr_at_01pct_fpr,
        "ulira_mean_example_accuracy": float(np.mean(attack.example_accuracy)),
    }
    arrays = {
        "epsilon": eps,
        "ulira_example_accuracy": attack.example_accuracy,
        "ulira_roc_fpr": attack.fpr,
        "ulira_roc_tpr": attack.tpr,
    }
    return {"scalars": scalars, "arrays": arrays}
