"""`jit_init`: a model's initialiser compiled with `init_compiler_options()` (fewer LLVM passes, to save
compile time) gives the very values of XLA's default compilation."""

import chex
import jax
import jax.numpy as jnp
import ml_collections as mlc

from lotus_jax.models import build_model, init_function, jit_init


def test_init_values_are_those_of_the_default_compilation():
    # Catches options that change the values (e.g. LLVM level 0 moves 1,849 of a width-4 ResNet's initial
    # weights by up to 3e-7): a model initialised by this package would then differ from what the same seed
    # gave before, and from `model.init` run by a user.
    model = build_model(mlc.ConfigDict(dict(name="resnet18", width=2)), 10, jnp.float32)
    sample = jnp.zeros((1, 8, 8, 1))
    key = jax.random.key(7)
    default = jax.jit(lambda k: model.init({"params": k}, sample, train=False))(key)
    chex.assert_trees_all_equal(jit_init(init_function(model, sample))(key), default)
