"""A small, fast unlearning problem for method tests: digits, a tiny CNN with BatchNorm, a trained original.

The CNN stands in for ResNet-18 (same call signature, BatchNorm with a mask) because methods do not
depend on the architecture and XLA compiles it in about a second.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np

from lotus_jax.data import make_mesh
from lotus_jax.data.sources import digits_dataset
from lotus_jax.data.splits import make_splits
from lotus_jax.data.transforms import Preprocess
from lotus_jax.evaluate import make_eval_fn
from lotus_jax.models import init_function
from lotus_jax.methods.supervised import train
from lotus_jax.train.context import Context
from lotus_jax.train.optim import optimizer_config


class TinyCNN(nn.Module):
    """conv(16) -> BN -> ReLU -> 2x2 avg-pool -> dense(64) -> ReLU -> dense(num_classes)."""

    num_classes: int = 10

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool, mask: jax.Array | None = None) -> jax.Array:
        x = nn.Conv(16, (3, 3))(x)
        bn_mask = None if mask is None else jnp.broadcast_to(mask[:, None, None, None], x.shape)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x, mask=bn_mask)
        x = nn.avg_pool(nn.relu(x), (2, 2), (2, 2))
        x = nn.relu(nn.Dense(64)(x.reshape(x.shape[0], -1)))
        return nn.Dense(self.num_classes)(x).astype(jnp.float32)


def make_context(seed: int = 0, devices: int = 1, forget_mode: str = "fraction", log=lambda s: None) -> Context:
    """A Context over digits (10% per-class forget set, or class 0 with forget_mode='class')."""
    ds = digits_dataset()
    settings = {"mode": forget_mode, "sampling": "random", "fraction": 0.1, "classes": [0]}
    splits = make_splits(ds.train.labels, ds.heldout.labels, settings, seed)
    model = TinyCNN(ds.num_classes)
    prep = Preprocess((0.3,), (0.4,))
    mesh = make_mesh(devices)
    init = init_function(model, jnp.zeros((1, 8, 8, 1)))
    return Context(model=model, prep=prep, dataset=ds, splits=splits, mesh=mesh,
                   eval_fn=make_eval_fn(model, prep, ds.num_classes), init_fn=init, eval_batch_size=256,
                   seed=seed, log=log)


def trained_problem(seed: int = 0, forget_mode: str = "fraction"):
    """(ctx, original variables) with the original trained to ~100% train accuracy on forget ∪ retain."""
    ctx = make_context(seed, forget_mode=forget_mode)
    cfg = mlc.ConfigDict(dict(epochs=15, batch_size=64,
                              optimizer=optimizer_config("sgd", 0.05, 5e-4, momentum=0.9)))
    idx = np.sort(np.concatenate([ctx.splits.forget, ctx.splits.retain]))
    original = train(ctx, ctx.init_variables(jax.random.key(seed)), idx, cfg, jax.random.key(seed + 1), "original")
    return ctx, original
