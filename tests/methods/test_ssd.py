"""SSD: exactly the parameters with I_f > alpha * I_D are dampened, by min(1, lambda * I_D / I_f)."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lotus_jax import methods
from lotus_jax.methods import ssd


def reference_importance(ctx, variables, indices: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Plain loop over consecutive chunks of `indices`: mean over chunks of the squared gradient of the
    chunk-mean CE (inference mode), accumulated in float64. A short last chunk is zero-padded to
    `batch_size` with weight 0, so one compiled gradient serves every chunk."""

    @jax.jit
    def grads(params, x, y, w):
        def loss(p):
            logits = ctx.model.apply({**variables, "params": p}, x, train=False)
            return jnp.sum(w * optax.softmax_cross_entropy_with_integer_labels(logits, y)) / jnp.sum(w)

        return jax.grad(loss)(params)

    total, n = None, 0
    for start in range(0, len(indices), batch_size):
        idx = indices[start:start + batch_size]
        pad = batch_size - len(idx)
        x = np.pad(ctx.dataset.train.get(idx), ((0, pad), (0, 0), (0, 0), (0, 0)))
        y = np.pad(ctx.dataset.train.labels[idx], (0, pad))
        w = np.pad(np.ones(len(idx), np.float32), (0, pad))
        g = grads(variables["params"], ctx.prep(x), y, w)
        sq = [np.asarray(a, np.float64) ** 2 for a in jax.tree.leaves(g)]
        total = sq if total is None else [t + s for t, s in zip(total, sq)]
        n += 1
    return [t / n for t in total]


def test_default_config_is_minimal():
    cfg = ssd.default_config()
    assert dict(cfg) == {"batch_size": 128, "alpha": 10.0, "lam": 1.0}


@pytest.mark.parametrize("fixture", ["problem", "class_problem"])
def test_dampens_exactly_the_selected_parameters(fixture, request):
    ctx, original = request.getfixturevalue(fixture)
    cfg = ssd.default_config()
    cfg.batch_size = 64
    res = methods.unlearn(ctx, "ssd", original, cfg, jax.random.key(0))
    full = np.sort(np.concatenate([ctx.splits.forget, ctx.splits.retain]))
    imp_f = reference_importance(ctx, original, ctx.splits.forget, cfg.batch_size)
    imp_d = reference_importance(ctx, original, full, cfg.batch_size)
    before = [np.asarray(p) for p in jax.tree.leaves(original["params"])]
    after = [np.asarray(p) for p in jax.tree.leaves(res.variables["params"])]
    n_selected = n_changed = 0
    for p0, p1, f, d in zip(before, after, imp_f, imp_d):
        threshold = cfg.alpha * d
        clear = np.abs(f - threshold) > 1e-3 * np.maximum(f, threshold)
        selected = f > threshold
        keep, damp = clear & ~selected, clear & selected
        assert np.array_equal(p1[keep].view(np.uint32), p0[keep].view(np.uint32))
        expected = p0[damp] * np.minimum(1.0, cfg.lam * d[damp] / f[damp])
        np.testing.assert_allclose(p1[damp], expected, rtol=1e-4, atol=1e-9)
        n_selected += int(selected.sum())
        n_changed += int(np.sum(p1 != p0))
    assert n_selected > 0 and n_changed > 0
    assert abs(res.extra["dampened"] - n_selected) <= max(2, n_selected // 100)
    for a, b in zip(jax.tree.leaves(original["batch_stats"]), jax.tree.leaves(res.variables["batch_stats"])):
        assert np.array_equal(np.asarray(a), np.asarray(b))
