"""The BatchNorm with a hand-written gradient: flax's variables, values and running averages bit for bit, its
gradients against a float64 autodiff reference, padded rows left out of the statistics."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import parameterized
from flax import linen as nn

from lotus_jax.models.batchnorm import BatchNorm

SHAPE = (6, 3, 4, 5)
VALID = np.array([True, True, False, True, True, False])  # two padded rows, not at the end only


def _flax(train, dtype=None):
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype,
                        use_fast_variance=False)


def _ours(train, dtype=None):
    return BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype)


def _inputs(seed=0):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(SHAPE) * 3.0 + 2.0).astype(np.float32)
    params = {"scale": rng.standard_normal(SHAPE[-1]).astype(np.float32),
              "bias": rng.standard_normal(SHAPE[-1]).astype(np.float32)}
    stats = {"mean": rng.standard_normal(SHAPE[-1]).astype(np.float32),
             "var": rng.uniform(0.5, 2.0, SHAPE[-1]).astype(np.float32)}
    weights = rng.standard_normal(SHAPE).astype(np.float32)
    return x, params, stats, weights


def _loss(module, params, stats, x, weights, mask):
    """A loss that reads every output, padded rows included (so their direct gradient path is tested)."""
    y, updates = module.apply({"params": params, "batch_stats": stats}, x, mask=mask, mutable=["batch_stats"])
    return jnp.sum(jnp.tanh(y.astype(jnp.float32)) * weights), (y, updates["batch_stats"])


class BatchNormTest(chex.TestCase):
    def test_variables_are_flax_batchnorms(self):
        # Catches renamed or reshaped variables: checkpoints and imported torch weights would no longer load.
        x = jnp.zeros(SHAPE)
        ours = _ours(False).init(jax.random.key(0), x)
        theirs = _flax(False).init(jax.random.key(0), x)
        chex.assert_trees_all_equal(ours, theirs)
        chex.assert_trees_all_equal_dtypes(ours, theirs)

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters((True, None), (True, "mask"), (False, None), (False, "mask"))
    def test_values_and_running_averages_equal_flax(self, train, masked):
        # Catches statistics over the padded rows, a one-pass (E[x^2] - E[x]^2) variance, the torch-style
        # unbiased variance in the running average, or a momentum applied the other way round.
        x, params, stats, _ = _inputs()
        mask = jnp.asarray(VALID)[:, None, None, None] if masked else None

        def apply(module):
            return module.apply({"params": params, "batch_stats": stats}, x, mask=mask, mutable=["batch_stats"])

        # Equal up to XLA's choice of fused multiply-adds (the last bit).
        chex.assert_trees_all_close(self.variant(lambda: apply(_ours(train)))(),
                                    self.variant(lambda: apply(_flax(train)))(), rtol=1e-6, atol=1e-6)

    @parameterized.parameters(jnp.float32, jnp.bfloat16)
    def test_compute_dtype_follows_flax(self, dtype):
        x, params, stats, _ = _inputs()
        for train in (True, False):
            ours = _ours(train, dtype).apply({"params": params, "batch_stats": stats}, x.astype(dtype),
                                             mutable=["batch_stats"])
            theirs = _flax(train, dtype).apply({"params": params, "batch_stats": stats}, x.astype(dtype),
                                               mutable=["batch_stats"])
            chex.assert_trees_all_close(ours, theirs, rtol=1e-6 if dtype == jnp.float32 else 1e-2, atol=1e-6)
            chex.assert_trees_all_equal_dtypes(ours, theirs)

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters(None, "mask")
    def test_gradients_match_a_float64_autodiff_reference(self, masked):
        # Catches a backward pass that omits the statistics' terms, sums d scale / d bias over the valid rows
        # only (padded rows' outputs depend on them too), spreads the statistics' terms over padded rows, or
        # divides by the batch size instead of the number of valid rows.
        x, params, stats, weights = _inputs(1)
        mask = jnp.asarray(VALID)[:, None, None, None] if masked else None
        grad = self.variant(jax.grad(lambda p, z: _loss(_ours(True), p, stats, z, weights, mask)[0],
                                     argnums=(0, 1)))(params, x)
        with jax.enable_x64(True):
            to64 = lambda t: jax.tree.map(lambda a: np.asarray(a, np.float64), t)
            ref = jax.grad(lambda p, z: _loss(_flax(True, jnp.float64), p, to64(stats), z, weights, mask)[0],
                           argnums=(0, 1))(to64(params), to64(x))
            ref = jax.tree.map(np.asarray, ref)
        chex.assert_trees_all_close(jax.tree.map(np.asarray, grad), jax.tree.map(np.float32, ref),
                                    rtol=2e-5, atol=2e-5)

    def test_padded_rows_do_not_move_the_statistics(self):
        # Catches padded rows in the statistics: valid rows' outputs and the running averages would change.
        x, params, stats, _ = _inputs(2)
        mask = jnp.asarray(VALID)[:, None, None, None]
        other = x.copy()
        other[~VALID] = 1e3
        apply = lambda z: _ours(True).apply({"params": params, "batch_stats": stats}, z, mask=mask,
                                            mutable=["batch_stats"])
        (y1, s1), (y2, s2) = apply(x), apply(other)
        chex.assert_trees_all_equal(s1, s2)
        np.testing.assert_array_equal(np.asarray(y1)[VALID], np.asarray(y2)[VALID])
