"""SSD, Selective Synaptic Dampening (Foster et al., AAAI 2024). One shot: no optimizer, no epochs.

Importance of each parameter on a set S (the diagonal of the empirical Fisher information), estimated
per mini-batch as in the SSD code:

    I_S = (1 / n_batches) * sum_b (d L_b / d theta)^2,   L_b = mean cross-entropy over the valid rows of b

with the model in inference mode (BatchNorm uses its running statistics). It is computed on the forget
set (`I_f`) and on the whole training set `D = D_f ∪ D_r` (`I_D`). Every parameter with
`I_f > alpha * I_D` is multiplied by `beta = min(1, lambda * I_D / I_f)`; every other parameter and the
BatchNorm statistics are returned bit-identical.

Choices where the paper leaves room:
- Squared gradient of each batch-mean loss, averaged over batches (the SSD code), not per-example
  squared gradients: the importances depend on the batch size (`batch_size`, default 128).
- Batches are unshuffled and in index order: `D_f` in the order of `ctx.splits.forget`, `D` in the
  order of the training set (sorted union of forget and retain indices). The last batch is padded and
  its padded rows are excluded from the loss; it counts as one batch, like the SSD code's smaller
  last batch.
- Only trainable parameters are dampened (BatchNorm running statistics are not parameters).
- Dampening is applied once (the LoTUS reference repeats it every epoch, a defect not copied here).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np

from lotus_jax.data.pipeline import num_batches
from lotus_jax.train.context import Context
from lotus_jax.train.losses import cross_entropy
from lotus_jax.train.runner import Plan, fold_batches
from lotus_jax.train.state import Variables, divide_tree, place, zeros_like_tree

def default_config() -> mlc.ConfigDict:
    """docs/definitions.md §4: alpha (selection weighting) 10, lambda (dampening constant) 1; batch 128."""
    return mlc.ConfigDict(dict(batch_size=128, alpha=10.0, lam=1.0))


def accumulate_squared_grads(total: Any, batch: dict, variables: Variables, *, apply_fn: Callable, prep
                             ) -> Any:
    """`total + (grad of the batch-mean CE w.r.t. the parameters)^2`, model in inference mode."""

    def loss_fn(params):
        logits = apply_fn({**variables, "params": params}, prep(batch["image"]), train=False)
        return cross_entropy(logits, batch["label"], batch["mask"])

    grads = jax.grad(loss_fn)(variables["params"])
    return jax.tree.map(lambda t, g: t + jnp.square(g.astype(jnp.float32)), total, grads)


def importance(ctx: Context, accumulate: Callable, variables: Variables, indices: np.ndarray, batch_size: int
               ) -> Any:
    """Mean over unshuffled batches of `indices` of the squared batch-mean-loss gradients."""
    # On the mesh like the gradients it accumulates: the step then compiles once, not again after its first call.
    total = place(zeros_like_tree(variables["params"], jnp.float32), ctx.mesh)
    total = fold_batches(ctx, accumulate, total, indices, batch_size, variables)
    return divide_tree(total, jnp.float32(max(num_batches(len(indices), batch_size), 1)))


def dampen(params: Any, imp_forget: Any, imp_full: Any, alpha: float, lam: float) -> tuple[Any, jax.Array]:
    """`w *= min(1, lam * I_D / I_f)` where `I_f > alpha * I_D`, `w` unchanged elsewhere; also the count."""
    selected = jax.tree.map(lambda f, d: f > alpha * d, imp_forget, imp_full)

    def one(p, f, d, sel):
        beta = jnp.minimum(1.0, (lam * d) / jnp.where(sel, f, 1.0))
        return jnp.where(sel, p * beta, p)

    new = jax.tree.map(one, params, imp_forget, imp_full, selected)
    return new, sum(jnp.sum(s) for s in jax.tree.leaves(selected))


def plan(ctx: Context, original: Variables, cfg, key: jax.Array) -> Plan:
    """One shot, no epochs: I_f on D_f, I_D on D_f ∪ D_r, one dampening (deterministic: `key` is unused)."""
    del key
    full = np.sort(np.concatenate([ctx.splits.forget, ctx.splits.retain]))
    accumulate = jax.jit(functools.partial(accumulate_squared_grads, apply_fn=ctx.model.apply, prep=ctx.prep),
                         donate_argnums=0)
    extra: dict = {}

    def finish(variables: Variables) -> Variables:
        imp_forget = importance(ctx, accumulate, variables, ctx.splits.forget, cfg.batch_size)
        imp_full = importance(ctx, accumulate, variables, full, cfg.batch_size)
        params, count = jax.jit(dampen, static_argnums=(3, 4))(variables["params"], imp_forget, imp_full,
                                                                float(cfg.alpha), float(cfg.lam))
        extra.update(dampened=int(count), parameters=sum(p.size for p in jax.tree.leaves(params)))
        ctx.log(f"[ssd] dampened {extra['dampened']}/{extra['parameters']} parameters")
        return {**variables, "params": params}

    return Plan(state=place(original, ctx.mesh), batch_size=int(cfg.batch_size), finish=finish, extra=extra,
                summary=f"|D_f|={len(ctx.splits.forget)} |D|={len(full)} alpha={cfg.alpha} lambda={cfg.lam}")
