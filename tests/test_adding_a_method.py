"""Adding a method: a module with `default_config()` and `plan(ctx, original, cfg, key)`, registered by name in
`lotus_jax.methods.REGISTRY`, runs through `lotus_jax.main` like the built-in methods: trained, timed,
checkpointed, evaluated and reported. The toy method below is the one README "Adding a method" shows."""

import functools
import json
import math
import sys

import jax
import ml_collections as mlc

from configs.default import get_config
from lotus_jax import main
from lotus_jax.train.losses import cross_entropy
from lotus_jax.train.optim import make_optimizer, optimizer_config
from lotus_jax.train.runner import Phase, Plan
from lotus_jax.train.state import create_state, forward


# -- the method: gradient ascent on the forget set -------------------------------------------------------------

def default_config():
    """The method's config section (`--config.ascent.epochs=...` overrides it)."""
    return mlc.ConfigDict(dict(epochs=2, batch_size=64, optimizer=optimizer_config("sgd", 1e-3)))


def ascent_step(state, batch, *, prep):
    """One step up the cross-entropy of a forget batch; padded rows (mask False) count nowhere."""

    def loss_fn(params):
        logits, batch_stats = forward(state, params, prep(batch["image"]), batch["mask"], train=True)
        return -cross_entropy(logits, batch["label"], batch["mask"]), batch_stats

    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    return state.apply_gradients(grads=grads, batch_stats=batch_stats), {"forget_ce": -loss}


def plan(ctx, original, cfg, key):
    """The student starts as the original; every epoch is one shuffled pass over D_f."""
    step = functools.partial(ascent_step, prep=ctx.prep)
    return Plan(state=create_state(ctx.model, original, make_optimizer(cfg.optimizer), ctx.mesh),
                batch_size=cfg.batch_size, epochs=cfg.epochs,
                phases=lambda epoch, info: [Phase("forget", step, ctx.splits.forget)])


# -- the test ----------------------------------------------------------------------------------------------------

def test_a_registered_method_runs_end_to_end(tmp_path, register_method):
    register_method("ascent", sys.modules[__name__])  # this file is the method's module
    cfg = get_config()  # configs/default.py (digits), shrunk for speed as in tests/test_main.py
    cfg.model.width = 4
    cfg.mesh.data = 1  # one of the 8 fake devices: the sharded path has its own tests
    for stage in ("train", "retrain"):
        cfg[stage].epochs = 3
    with cfg.unlocked():
        cfg.ascent = default_config()
    cfg.methods = "ascent"

    main.run(cfg, tmp_path)

    entry = json.loads((tmp_path / "metrics.json").read_text())["models"]["ascent"]
    assert "failed" not in entry, entry
    for key in ("acc_forget", "acc_retain", "acc_val", "acc_test", "mia", "rf_jsd", "jsd", "avg_gap", "time_s"):
        assert isinstance(entry[key], float) and math.isfinite(entry[key]), (key, entry[key])
    assert entry["time_s"] > 0
    assert (tmp_path / "checkpoints" / "ascent" / "_CHECKPOINT_METADATA").exists()
    history = json.loads((tmp_path / "results" / "ascent.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [1, 2] and all(math.isfinite(h["forget_ce"]) for h in history)
    assert "| ascent |" in (tmp_path / "report.md").read_text()
