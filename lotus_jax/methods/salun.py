"""SalUn (SPEC §5, Fan et al., "SalUn: Empowering Machine Unlearning via Gradient-based Weight Saliency", ICLR
2024): random-label unlearning restricted to the parameters most salient for the forget loss.

1. Saliency mask `m = 1(|grad_theta CE(theta_o; D_f)| >= gamma)`: the gradient of the mean forget
   cross-entropy at the original parameters, accumulated over all forget batches (BatchNorm in inference
   mode, so computing it changes nothing), and `gamma` chosen so that the top `mask_fraction` (10%, SPEC
   §5) of entries are kept. The threshold is GLOBAL, over all parameters of the network concatenated (not
   per tensor), as in SalUn's `generate_mask` (one ranking of every parameter's |gradient|); so some
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

SGD lr 1e-3, weight decay 5e-4, no momentum (SPEC §5 lists none; SalUn's own code uses 0.9, available as
`optimizer.momentum`); batch 128. The saliency pass is part of the timed unlearning call.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np
import optax

from lotus_jax.data import pipeline
from lotus_jax.errors import ConfigError
from lotus_jax.methods.base import MethodResult
from lotus_jax.methods.common import (
    Context,
    Timer,
    Variables,
    create_state,
    epoch_batches,
    make_optimizer,
    optimizer_config,
    replicate,
    variables_of,
)
from lotus_jax.methods.finetune import make_ce_step
from lotus_jax.methods.random_labels import wrong_labels


def default_config() -> mlc.ConfigDict:
    """SPEC §5: top 10% mask, SGD lr 1e-3, weight decay 5e-4 (no momentum); 10 epochs (ResNet-18), batch 128."""
    return mlc.ConfigDict(dict(epochs=10, batch_size=128, mask_fraction=0.10,
                               optimizer=optimizer_config("sgd", 1e-3, 5e-4)))


def forget_gradient(ctx: Context, variables: Variables, batch_size: int) -> Any:
    """`grad_theta` of the mean cross-entropy over the whole forget set (inference mode), as a params pytree.

    Each batch contributes the gradient of its summed per-example losses; the total is divided by |D_f|.
    """
    def grad_sum(acc: Any, v: Variables, batch: dict) -> Any:
        x = ctx.prep(batch["image"])

        def loss(params):
            logits = ctx.model.apply({**v, "params": params}, x, train=False)
            ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), batch["label"])
            return jnp.sum(jnp.where(batch["mask"], ce, 0.0))

        return jax.tree.map(jnp.add, acc, jax.grad(loss)(v["params"]))

    step = jax.jit(grad_sum, donate_argnums=0)
    variables = replicate(variables, ctx.mesh)
    acc = replicate(jax.tree.map(jnp.zeros_like, variables["params"]), ctx.mesh)
    for batch in pipeline.prefetch(pipeline.batches(ctx.dataset.train, ctx.splits.forget, batch_size), ctx.mesh):
        acc = step(acc, variables, batch)
    n = max(len(ctx.splits.forget), 1)
    return jax.tree.map(lambda g: g / n, acc)


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


def saliency_mask(ctx: Context, variables: Variables, fraction: float, batch_size: int) -> Any:
    """SalUn's weight-saliency mask: the top `fraction` of parameters by |forget-loss gradient|, globally."""
    if not 0.0 <= fraction <= 1.0:
        raise ConfigError(f"salun mask_fraction must lie in [0, 1], got {fraction}")
    grads = forget_gradient(ctx, variables, batch_size)
    total = sum(leaf.size for leaf in jax.tree.leaves(grads))
    return top_fraction_mask(grads, int(fraction * total))


def unlearn(ctx: Context, original: Variables, cfg, key: jax.Array) -> MethodResult:
    """Saliency mask, then `cfg.epochs` epochs of masked random-label training on D_f ∪ D_r. Labels and
    batch order come from `ctx.seed` (`key` is unused: nothing in the update is random)."""
    cursor = ctx.cursor("salun", cfg)
    pipeline.check_batch_size(cfg.batch_size, ctx.mesh)
    forget, retain = ctx.splits.forget, ctx.splits.retain
    labels = ctx.dataset.train.labels
    mask = saliency_mask(ctx, original, float(cfg.mask_fraction), cfg.batch_size)
    masked = int(sum(int(jnp.sum(m)) for m in jax.tree.leaves(mask)))
    total = int(sum(m.size for m in jax.tree.leaves(mask)))
    indices = np.concatenate([forget, retain])
    targets = np.concatenate([wrong_labels(labels[forget], ctx.num_classes, np.random.default_rng([ctx.seed, 41])),
                              labels[retain].astype(np.int32)])
    steps = pipeline.num_batches(len(indices), cfg.batch_size)
    state = create_state(ctx.model, original, make_optimizer(cfg.optimizer, steps), ctx.mesh)
    state = cursor.restore(state)
    step = make_ce_step(ctx, mask)
    ctx.log(f"[salun] mask {masked}/{total} parameters ({masked / max(total, 1):.4f}); "
            f"|D_f|={len(forget)} |D_r|={len(retain)} lr={cfg.optimizer.lr}")
    for epoch in cursor.epochs(int(cfg.epochs)):
        t = Timer()
        rng = np.random.default_rng([ctx.seed, 42, epoch])
        state, m = cursor.run_phase(step, state, epoch_batches(ctx, indices, cfg.batch_size, rng, {"target": targets}))
        loss = m["loss"]
        sec = t()
        cursor.end_epoch(state, {"loss": loss, "seconds": sec})
        ctx.log(f"[salun] epoch {epoch + 1}/{cfg.epochs}  loss (random-label D_f + D_r) {loss:.4f}  {sec:.1f}s")
    variables = jax.block_until_ready(variables_of(state))
    return MethodResult(variables=variables, time_s=cursor.elapsed(), history=cursor.history,
                        extra={"masked_parameters": masked, "total_parameters": total,
                               "mask_fraction": masked / max(total, 1)})
