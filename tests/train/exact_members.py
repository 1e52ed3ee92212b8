"""Vmapped population members against their single runs, bit for bit: run as a script under `EXACT_XLA_FLAGS`.

With XLA's default CPU settings a batched program rounds differently from the single one (fused multiply-adds,
threaded reductions, algebraic rewrites; docs/definitions.md). These flags turn the three off, so float32
arithmetic no longer depends on how XLA compiles the program, and every difference left would be the
population's own (a member with another's key, data order, teacher or stop epoch). Prints one line per case
and exits 1 if any member differs. `tests/train/test_exact_members.py` runs it.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Callable

EXACT_XLA_FLAGS = ("--xla_cpu_max_isa=AVX --xla_cpu_experimental_ynn_fusion_type= "
                   "--xla_disable_hlo_passes=algsimp --xla_force_host_platform_device_count=2")
SEEDS = [21, 22, 23, 24]


def _cases():
    import jax
    import ml_collections as mlc

    from lotus_jax import methods
    from lotus_jax.configs.default import get_config
    from lotus_jax.data.transforms import Preprocess
    from lotus_jax.evaluate import make_eval_fn
    from lotus_jax.methods import supervised
    from lotus_jax.models import init_function
    from lotus_jax.models.resnet import ResNet18
    from lotus_jax.train.optim import optimizer_config
    from tests.methods.helpers import trained_problem

    ctx, original = trained_problem(seed=3)
    cfg = get_config()

    def gold(opt: str) -> tuple[Callable, mlc.ConfigDict]:
        tcfg = mlc.ConfigDict({"epochs": 2, "batch_size": 50, "optimizer": optimizer_config(
            opt, 0.01 if opt == "adam" else 0.05, 5e-4, momentum=0.0 if opt == "adam" else 0.9)})
        return (lambda m, c, k: supervised.plan(c, c.init_variables(jax.random.fold_in(k, 0)), c.splits.retain,
                                                tcfg)), tcfg

    def method(name: str, stop_member: int | None = None) -> tuple[Callable, mlc.ConfigDict]:
        mcfg = mlc.ConfigDict(cfg[name].to_dict())
        mcfg.epochs = 2

        def make(m, c, k):
            plan = methods.REGISTRY.get(name).plan(c, original, mcfg, k)
            if m != stop_member:
                return plan
            hook = plan.before_epoch

            def before_epoch(state, epoch):  # this member also stops from epoch 1 on (LoTUS's rule, forced)
                info = dict(hook(state, epoch)) if hook else {}
                return {**info, "stopped": bool(info.get("stopped", False)) or epoch >= 1}
            return dataclasses.replace(plan, before_epoch=before_epoch)
        return make, mcfg

    resnet = ResNet18(num_classes=10, width=4)  # its convolutions run per member in a vmap (models/members.py)
    resnet_ctx = dataclasses.replace(ctx, model=resnet, init_fn=init_function(resnet, jax.numpy.zeros((1, 8, 8, 1))),
                                     eval_fn=make_eval_fn(resnet, ctx.prep, 10))
    augmenting = dataclasses.replace(ctx, prep=Preprocess((0.3,), (0.4,), augment="crop", pad=1),
                                     unlearn_augment=True)
    return [
        ("gold, Adam", ctx, *gold("adam"), 1, False, None),
        ("gold, SGD with momentum, members over 2 devices", ctx, *gold("sgd"), 2, False, None),
        ("gold, ResNet-18 of width 4, SGD with momentum", resnet_ctx, *gold("sgd"), 1, False, None),
        ("LoTUS, member 1 stops after epoch 1, members over 2 devices", ctx, *method("lotus", stop_member=1), 2,
         False, 1),
        ("Finetune, augmented batches", augmenting, *method("finetune"), 1, True, None),
        ("Random labels", ctx, *method("random_labels"), 1, False, None),
        ("SCRUB (one teacher shared by all members)", ctx, *method("scrub"), 1, False, None),
    ]


def _relative_difference(a, b) -> float:
    """||a - b|| / ||a|| over all the parameters (a measure of how far a member is from its single run)."""
    import jax
    import numpy as np
    pairs = [(np.asarray(x, np.float64), np.asarray(y, np.float64)) for x, y in
             zip(jax.tree.leaves(a["params"]), jax.tree.leaves(b["params"]))]
    return float(np.sqrt(sum(np.sum((x - y) ** 2) for x, y in pairs) / sum(np.sum(x ** 2) for x, _ in pairs)))


def main(max_devices: int | None = None) -> int:
    """Every case; `max_devices` caps the member-axis devices (to run the cases on one accelerator, where the
    largest relative difference of the parameters is printed as a measure, not a check)."""
    import chex
    import jax
    import numpy as np

    from lotus_jax.train import runner
    from lotus_jax.train.population import member, population_mesh, run_population

    cases = _cases()
    failed = 0
    for title, ctx, make_plan, settings, devices, augment, stopping in cases:
        keys = jax.random.split(jax.random.key(len(title)), len(SEEDS))
        devices = min(devices, max_devices or devices)
        pop = run_population(ctx, "member", make_plan, SEEDS, keys, settings, population_mesh(devices), augment)
        differing, largest = [], 0.0
        for m, seed in enumerate(SEEDS):
            c = dataclasses.replace(ctx, seed=seed)
            single = runner.run(c, "member", lambda c=c, m=m, make=make_plan, k=keys[m]: make(m, c, k), settings,
                                keys[m], augment)
            try:
                chex.assert_trees_all_equal(single.variables, member(pop.variables, m))
            except AssertionError:
                differing.append(m)
                largest = max(largest, _relative_difference(single.variables, member(pop.variables, m)))
        spread = float(np.max(np.abs(np.asarray(jax.tree.leaves(member(pop.variables, 0))[0])
                                     - np.asarray(jax.tree.leaves(member(pop.variables, 1))[0]))))
        if spread == 0.0:  # members that all equal each other would hide a member paired with another's run
            differing.append("members 0 and 1 are equal")
        if stopping is not None and not any(h.get("stopped", False) for h in pop.histories[stopping]):
            differing.append(f"member {stopping} never stopped")
        failed += bool(differing)
        print(f"{'FAIL' if differing else 'ok'}  {title}: {len(SEEDS)} members"
              + (f", differing: {differing}; largest ||member - single run|| / ||single run|| of the parameters "
                 f"{largest:.2g}" if differing
                 else ", each bit for bit its single run"), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    os.environ["XLA_FLAGS"] = EXACT_XLA_FLAGS  # before jax is imported; no compilation cache of other flags
    os.environ.pop("JAX_COMPILATION_CACHE_DIR", None)
    sys.exit(main())
