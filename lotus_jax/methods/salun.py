"""SalUn (docs/definitions.md §4, Fan et al., "SalUn: Empowering Machine Unlearning via Gradient-based Weight
Saliency", ICLR 2024): random-label unlearning restricted to the parameters most salient for the forget loss.

1. Saliency mask `m = 1(|grad_theta CE(theta_o; D_f)| >= gamma)`: the gradient of the mean forget
   cross-entropy at the original parameters, accumulated over all forget batches (BatchNorm in inference
   mode, so computing it changes nothing), and `gamma` chosen so that the top `mask_fraction` (10%,
   docs/definitions.md §4) of entries are kept. The threshold is GLOBAL, over all parameters of the network
   concatenated (not per tensor), as in SalUn's `generate_mask` (one ranking of every parameter's |gradient|); so some
   tensors get far more than 10% and others none. Exactly `floor(mask_fraction * N)` entries are kept
   (SalUn's `int(len * ratio)`), ties broken by position.
2. Random-label training (SalUn's eq. for classification): cross-entropy on D_f relabelled with random
   labels `y' != y` plus cross-entropy on D_r with true labels. As in SalUn's RL code the two sets form
   one training set shuffled together (mixed batches), and the random labels are drawn once, before
   training, from `ctx.seed` (the paper fixes neither; it requires only `y' != y`, which is kept).
3. Only masked parameters move: gradients are zeroed outside the mask before the optimizer and the final
   updates are discarded there too, so neither weight decay nor momentum can move an unmasked parameter
   (they stay bit-identical; SalUn's PyTorch code lets weight decay shrink them, which is not SalUn's
   method). BatchNorm running statistics are buffers, not parameters: they are not masked and are
   updated in training mode on every batch, as in SalUn's training loop.

SGD lr 1e-3, momentum 0.9 (as SalUn's own code), weight decay 5e-4; batch 128. The saliency pass is part of
the timed unlearning call.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np
import optax

from lotus_jax.data.pipeline import num_batches
from lotus_jax.errors import ConfigError
from lotus_jax.methods.finetune import ce_step
from lotus_jax.methods.random_labels import wrong_labels
from lotus_jax.train.context import Context
from lotus_jax.train.optim import make_optimizer, optimizer_config
from lotus_jax.train.runner import Phase, Plan, fold_batches
from lotus_jax.train.state import Variables, create_state, divide_tree, place, zeros_like_tree

def default_config() -> mlc.ConfigDict:
    """docs/definitions.md §4: top 10% mask, SGD lr 1e-3, momentum 0.9, weight decay 5e-4; 10 epochs (ResNet-18),
    batch 128."""
    return mlc.ConfigDict(dict(epochs=10, batch_size=128, mask_fraction=0.10,
                               optimizer=optimizer_config("sgd", 1e-3, 5e-4, momentum=0.9)))


def forget_gradient(ctx: Context, variables: Variables, batch_size: int) -> Any:
    """`grad_theta` of the mean cross-entropy over the whole forget set (inference mode), as a params pytree.

    Each batch contributes the gradient of its summed per-example losses; the total is divided by |D_f|.
    """
    def grad_sum(acc: Any, batch: dict, v: Variables) -> Any:
        x = ctx.prep(batch["image"])

        def loss(params):
            logits = ctx.model.apply({**v, "params": params}, x, train=False)
            ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), batch["label"])
            return jnp.sum(jnp.where(batch["mask"], ce, 0.0))

        return jax.tree.map(jnp.add, acc, jax.grad(loss)(v["params"]))

    variables = place(variables, ctx.mesh)
    acc = place(zeros_like_tree(variables["params"]), ctx.mesh)
    acc = fold_batches(ctx, jax.jit(grad_sum, donate_argnums=0), acc, ctx.splits.forget, batch_size, variables)
    return divide_tree(acc, jnp.float32(max(len(ctx.splits.forget), 1)))


@functools.partial(jax.jit, static_argnums=1)
def top_fraction_mask(scores: Any, k: int) -> Any:
    """Boolean pytree, True at the `k` entries of largest |score| over ALL leaves together (global ranking;
    ties by position)."""
    leaves, treedef = jax.tree.flatten(scores)
    flat = jnp.concatenate([jnp.abs(leaf).ravel() for leaf in leaves])
    order = jnp.argsort(-flat, stable=True)
    keep = jnp.zeros(flat.shape, bool).at[order[:k]].set(True)
    out, start = [], 0
    for leaf in leaves:
        out.append(keep[start:start + leaf.size].reshape(leaf.shape))
        start += leaf.size
    return jax.tree.unflatten(treedef, out)


@jax.jit
def count_true(mask: Any) -> jax.Array:
    """Number of True entries over all leaves of a boolean pytree (one program)."""
    return sum(jnp.sum(m, dtype=jnp.int32) for m in jax.tree.leaves(mask))


def saliency_mask(ctx: Context, variables: Variables, fraction: float, batch_size: int) -> Any:
    """SalUn's weight-saliency mask: the top `fraction` of parameters by |forget-loss gradient|, globally."""
    if not 0.0 <= fraction <= 1.0:
        raise ConfigError(f"salun mask_fraction must lie in [0, 1], got {fraction}")
    grads = forget_gradient(ctx, variables, batch_size)
    total = sum(leaf.size for leaf in jax.tree.leaves(grads))
    return top_fraction_mask(grads, int(fraction * total))


def plan(ctx: Context, original: Variables, cfg, key: jax.Array) -> Plan:
    """Saliency mask, then `cfg.epochs` epochs of masked random-label training on D_f ∪ D_r (labels and batch
    order from `ctx.seed`; nothing in the update is random)."""
    del key
    forget, retain = ctx.splits.forget, ctx.splits.retain
    labels = ctx.dataset.train.labels
    mask = saliency_mask(ctx, original, float(cfg.mask_fraction), cfg.batch_size)
    masked = int(count_true(mask))
    total = int(sum(m.size for m in jax.tree.leaves(mask)))
    indices = np.concatenate([forget, retain])
    targets = np.concatenate([wrong_labels(labels[forget], ctx.num_classes, np.random.default_rng([ctx.seed, 41])),
                              labels[retain].astype(np.int32)])
    tx = make_optimizer(cfg.optimizer, num_batches(len(indices), cfg.batch_size))
    step = functools.partial(ce_step, prep=ctx.prep)
    return Plan(state=create_state(ctx.model, original, tx, ctx.mesh), batch_size=int(cfg.batch_size),
                epochs=int(cfg.epochs),
                phases=lambda epoch, info: [Phase("train", step, indices, args=(mask,), extra={"target": targets})],
                summary=f"mask {masked}/{total} parameters ({masked / max(total, 1):.4f}); "
                        f"|D_f|={len(forget)} |D_r|={len(retain)} lr={cfg.optimizer.lr}",
                extra={"masked_parameters": masked, "total_parameters": total,
                       "mask_fraction": masked / max(total, 1)})
