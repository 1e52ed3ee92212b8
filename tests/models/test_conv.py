"""`conv2d`: lax's convolution and autodiff gradients bit for bit; vmapped over members with a kernel each, each
member's convolution and gradients are those of the member alone (one convolution per member on CPU, XLA's
grouped convolution elsewhere)."""

import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import parameterized

from lotus_jax.models import conv as conv_module
from lotus_jax.models.conv import _lax_conv, conv2d

PAD1 = ((1, 1), (1, 1))


def _loss_and_grads(conv, x, kernel, weights, strides, padding):
    return jax.value_and_grad(lambda x, k: jnp.sum(conv(x, k, strides, padding) * weights), argnums=(0, 1))(x, kernel)


def _problem(members: int | None, cin: int = 3, cout: int = 8, size: int = 9, seed: int = 0):
    lead = () if members is None else (members,)
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal((*lead, 4, size, size, cin)), jnp.float32)
    kernel = jnp.asarray(rng.standard_normal((*lead, 3, 3, cin, cout)), jnp.float32)
    return x, kernel, rng


class Conv2dTest(chex.TestCase):
    # Catches a custom gradient that differs from autodiff (a kernel gradient of the wrong orientation, a missing
    # stride or padding in the backward pass): values and both gradients must equal lax's, bit for bit.
    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters(((1, 1), PAD1), ((2, 2), PAD1), ((2, 2), ((0, 0), (0, 0))), ((1, 2), ((1, 0), (2, 1))))
    def test_values_and_gradients_equal_lax_autodiff(self, strides, padding):
        x, kernel, rng = _problem(None)
        weights = jnp.asarray(rng.standard_normal(_lax_conv(x, kernel, strides, padding).shape), jnp.float32)
        got = self.variant(lambda x, k: _loss_and_grads(conv2d, x, k, weights, strides, padding))(x, kernel)
        want = self.variant(lambda x, k: _loss_and_grads(_lax_conv, x, k, weights, strides, padding))(x, kernel)
        chex.assert_trees_all_equal(got, want)
        chex.assert_trees_all_equal(conv2d(x, kernel, strides, padding), _lax_conv(x, kernel, strides, padding))

    # Catches a vmap rule that pairs member m's input with another member's kernel or cotangent, or stacks the
    # members in another order: each member's output and gradients are those of the member alone, bit for bit.
    @parameterized.parameters(((1, 1), PAD1), ((2, 2), PAD1))
    def test_vmapped_members_are_each_member_alone(self, strides, padding):
        x, kernel, rng = _problem(3)

        def output_and_grads(a, b, cotangent):  # no sum over the output: a batched sum may add in another order
            out, vjp = jax.vjp(lambda a, b: conv2d(a, b, strides, padding), a, b)
            return out, vjp(cotangent)

        shape = jax.eval_shape(jax.vmap(lambda a, b: _lax_conv(a, b, strides, padding)), x, kernel).shape
        cotangent = jnp.asarray(rng.standard_normal(shape), jnp.float32)
        batched = jax.jit(jax.vmap(output_and_grads))(x, kernel, cotangent)
        for m in range(3):
            alone = jax.jit(output_and_grads)(x[m], kernel[m], cotangent[m])
            chex.assert_trees_all_equal(jax.tree.map(lambda t, m=m: t[m], batched), alone)

    # Catches a rule that drops a shared kernel's broadcast (the teacher of a population is one set of weights):
    # the output equals each member's input through the one kernel.
    def test_vmapped_inputs_with_one_shared_kernel(self):
        x, kernel, _ = _problem(3)
        out = jax.jit(jax.vmap(lambda a: conv2d(a, kernel[0], (1, 1), PAD1)))(x)
        for m in range(3):
            np.testing.assert_allclose(out[m], _lax_conv(x[m], kernel[0], (1, 1), PAD1), rtol=1e-5, atol=1e-5)


def _convolutions(fn, *args) -> list[tuple[int, int]]:
    """(feature_group_count, batch_group_count) of every convolution of the lowered program `jit(fn)(*args)`."""
    text = jax.jit(fn).lower(*args).as_text()
    lines = [line for line in text.splitlines() if "stablehlo.convolution" in line]
    group = lambda name, line: int(re.search(name + r" = (\d+)", line).group(1))
    return [(group("feature_group_count", line), group("batch_group_count", line)) for line in lines]


def test_on_cpu_each_member_has_its_own_convolutions_and_elsewhere_xla_batches_them(monkeypatch):
    # Catches a rule that lets XLA group the members' convolutions on CPU (a third slower there), or that unrolls
    # members on accelerators (one kernel launch per member and layer): 3 members, forward + input and kernel
    # gradients, counted in the traced program.
    x, kernel, _ = _problem(3)

    def grads(a, b):
        return jax.grad(lambda a, b: jnp.sum(conv2d(a, b, (1, 1), PAD1) ** 2), argnums=(0, 1))(a, b)

    per_member = _convolutions(jax.vmap(grads), x, kernel)
    assert per_member == [(1, 1)] * (3 * 3)
    monkeypatch.setattr(conv_module.jax, "default_backend", lambda: "gpu")
    batched = _convolutions(jax.vmap(grads), x, kernel)
    assert len(batched) == 3 and all(3 in groups for groups in batched)  # one grouped convolution per pass
