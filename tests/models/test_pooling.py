"""The 3x3/2 max-pool as two 1-D pools: flax's `max_pool` values bit for bit, its gradients to the last bit of
sums (an input that is the maximum of several windows adds their gradients in another order)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import parameterized
from flax import linen as nn

from lotus_jax.models.pooling import max_pool_3x3_s2


def _reference(x):
    return nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))


def _value_and_grad(pool, x, weights):
    return jax.value_and_grad(lambda z: jnp.sum(pool(z) * weights))(x)


class MaxPoolTest(chex.TestCase):
    # Catches a wrong even/odd offset or interleave (values or gradients at other positions), a gradient split
    # among tied maxima or given to the last of them instead of the first in row-major order (reduce_window's
    # rule; pooling rows before columns breaks it too), a lost gradient from the next window, and a gradient
    # that forgets the -inf padding (edge windows).
    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters((8, 8), (6, 10), (2, 2), (7, 8), (5, 5))
    def test_values_and_gradients_equal_reduce_window(self, h, w):
        rng = np.random.default_rng(h * 100 + w)
        x = rng.standard_normal((3, h, w, 4)).astype(np.float32)
        x[0] = np.round(x[0])  # many exact ties, as after a ReLU
        x[1] = np.maximum(x[1], 0.0)
        x = jnp.asarray(x)
        weights = jnp.asarray(rng.standard_normal(_reference(x).shape), jnp.float32)
        value, grad = self.variant(lambda z: _value_and_grad(max_pool_3x3_s2, z, weights))(x)
        ref_value, ref_grad = self.variant(lambda z: _value_and_grad(_reference, z, weights))(x)
        chex.assert_trees_all_equal((max_pool_3x3_s2(x), value), (_reference(x), ref_value))
        np.testing.assert_array_equal(np.asarray(grad) != 0, np.asarray(ref_grad) != 0)  # who gets a gradient
        np.testing.assert_allclose(grad, ref_grad, rtol=1e-6, atol=1e-6)

    def test_gradient_of_a_tie_goes_to_the_first_maximum_by_hand(self):
        x = jnp.zeros((1, 4, 4, 1)).at[0, 0, 1, 0].set(2.0).at[0, 1, 0, 0].set(2.0)
        grad = jax.grad(lambda z: jnp.sum(max_pool_3x3_s2(z)))(x)
        # Window (0, 0) covers rows 0-1, cols 0-1: its first maximum in row-major order is (0, 1); window (0, 1)
        # (cols 1-3) holds (0, 1) too; window (1, 0) (rows 1-3) holds (1, 0); window (1, 1) holds only zeros,
        # whose first is (1, 1).
        expected = np.zeros((4, 4))
        expected[0, 1], expected[1, 0], expected[1, 1] = 2.0, 1.0, 1.0
        np.testing.assert_array_equal(np.asarray(grad)[0, :, :, 0], expected)
