"""Whole-tree helpers of the train state: `all_finite`, `zeros_like_tree`, `divide_tree` (one program each)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from lotus_jax.train.state import all_finite, divide_tree, zeros_like_tree


def tree(bad_leaf=None, value=np.nan):
    t = {"a": {"kernel": np.ones((3, 4), np.float32), "bias": np.zeros(4, np.float32)},
         "b": [np.arange(6, dtype=np.float32).reshape(2, 3), np.float32(2.0)]}
    if bad_leaf is not None:
        leaves, treedef = jax.tree.flatten(t)
        leaves[bad_leaf] = np.array(leaves[bad_leaf], copy=True)
        leaves[bad_leaf].reshape(-1)[-1] = value  # the last element: a check of element 0 alone misses it
        t = jax.tree.unflatten(treedef, leaves)
    return t


def test_finite_tree_is_finite():
    assert bool(all_finite(tree())) is True
    assert bool(all_finite({})) is True


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("bad_leaf", [0, 1, 2, 3])
def test_one_bad_value_in_any_leaf_is_found(bad_leaf, value):
    assert bool(all_finite(tree(bad_leaf, value))) is False


def test_sharded_leaves_are_checked_on_the_mesh():
    mesh = jax.make_mesh((8,), ("data",))
    x = np.ones((8, 4), np.float32)
    x[7, 3] = np.nan  # on the last device's shard
    sharded = jax.device_put(x, NamedSharding(mesh, PartitionSpec("data")))
    assert bool(all_finite({"w": sharded})) is False
    assert bool(all_finite({"w": jnp.ones((8, 4))})) is True


def test_zeros_like_tree_keeps_shapes_and_each_leafs_dtype_unless_told():
    # Catches a dtype override applied when none was asked (bf16 leaves would become float32) or ignored.
    t = {"w": np.ones((2, 3), np.float32), "h": jnp.ones((4,), jnp.bfloat16), "n": [np.ones((), np.int32)]}
    zeros = zeros_like_tree(t)
    assert jax.tree.map(lambda x: (x.shape, x.dtype), zeros) == jax.tree.map(lambda x: (x.shape, x.dtype), t)
    assert all(not np.any(np.asarray(x)) for x in jax.tree.leaves(zeros))
    assert {x.dtype for x in jax.tree.leaves(zeros_like_tree(t, jnp.float32))} == {jnp.dtype(jnp.float32)}


def test_divide_tree_divides_every_leaf():
    t = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": [np.float32(7.0)]}
    out = divide_tree(t, jnp.float32(4.0))
    np.testing.assert_array_equal(out["a"], t["a"] / np.float32(4.0))
    assert float(out["b"][0]) == 1.75
