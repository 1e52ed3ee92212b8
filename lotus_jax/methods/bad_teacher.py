"""Bad Teacher (Chundawat et al., AAAI 2023, "Can Bad Teaching Induce Forgetting?").

The student starts as a copy of the original model and is distilled from two frozen teachers: on the
forget set from an *incompetent* teacher (a randomly initialised model of the same architecture), on a
retain subset `D_r'` from the *competent* teacher (the original). Per row, with `l = 1` for forget rows:

    loss = mean_i KL(softmax(t_i / T) || softmax(s_i / T)),   t_i = incompetent_i if l_i else competent_i

What the paper leaves open and the choice made here:
- KL reduction: the paper writes a KL divergence; its code uses torch's `kl_div` default, which divides
  by batch × classes. Here the textbook per-example KL averaged over valid rows (a constant factor k
  apart; Adam is nearly invariant to it).
- `D_r'`: 30% of `D_r`, sampled once with the seed, exactly as LoTUS samples it (`lotus.retain_subset`),
  so both methods see the same retain rows for a given seed. `D_f ∪ D_r'` is reshuffled every epoch
  (the reference code never shuffles, so its forget rows always come first).
- Both teachers run in inference mode (the random teacher's BatchNorm uses its initial running
  statistics); the student's BatchNorm runs in training mode over valid rows.
- The incompetent teacher is `ctx.init_variables(key)`: the driver's key is used for nothing else.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np

from lotus_jax.methods.lotus import retain_subset
from lotus_jax.train.context import Context
from lotus_jax.train.losses import kl_divergence
from lotus_jax.train.optim import make_optimizer, optimizer_config
from lotus_jax.train.runner import Phase, Plan
from lotus_jax.train.state import TrainState, Variables, create_state, forward, place

def default_config() -> mlc.ConfigDict:
    """docs/definitions.md §4: Adam lr 1e-4, no weight decay, 10 epochs, batch 128; KL at T=1; |D_r'| = 30% of |D_r|."""
    return mlc.ConfigDict(dict(epochs=10, batch_size=128, retain_fraction=0.3, temperature=1.0,
                               optimizer=optimizer_config("adam", 1e-4, 0.0)))


def bad_teacher_step(state: TrainState, batch: dict, teachers: dict[str, Variables], *, prep, temperature: float
                     ) -> tuple[TrainState, dict]:
    """One update: per-row teacher logits (incompetent on forget rows, competent on retain rows) -> KL."""
    x = prep(batch["image"])
    competent = state.apply_fn(teachers["competent"], x, train=False)
    incompetent = state.apply_fn(teachers["incompetent"], x, train=False)
    target = jax.lax.stop_gradient(jnp.where(batch["forget"][:, None].astype(bool), incompetent, competent))

    def loss_fn(params):
        logits, new_bs = forward(state, params, x, batch["mask"], train=True)
        return kl_divergence(target, logits, batch["mask"], temperature), new_bs

    (loss, new_bs), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    return state.apply_gradients(grads=grads, batch_stats=new_bs), {"loss": loss}


def plan(ctx: Context, original: Variables, cfg, key: jax.Array) -> Plan:
    """D_r' once, the incompetent teacher from `key`, then `cfg.epochs` epochs of KL to the per-row teacher."""
    sub = retain_subset(ctx.splits.retain, float(cfg.retain_fraction), ctx.seed)
    indices = np.concatenate([ctx.splits.forget, sub])
    flags = {"forget": np.concatenate([np.ones(len(ctx.splits.forget), np.int32), np.zeros(len(sub), np.int32)])}
    teachers = {"competent": place(original, ctx.mesh), "incompetent": ctx.init_variables(key)}
    step = functools.partial(bad_teacher_step, prep=ctx.prep, temperature=float(cfg.temperature))
    return Plan(state=create_state(ctx.model, original, make_optimizer(cfg.optimizer), ctx.mesh),
                batch_size=int(cfg.batch_size), epochs=int(cfg.epochs),
                phases=lambda epoch, info: [Phase("distill", step, indices, args=(teachers,), extra=flags)],
                summary=f"|D_f|={len(ctx.splits.forget)} |D_r'|={len(sub)} T={cfg.temperature}",
                extra={"retain_subset_size": len(sub)})
