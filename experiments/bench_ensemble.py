"""Training throughput of N models as one vmapped population against N one-at-a-time runs of the same work.

    python experiments/bench_ensemble.py [--members 1,4,16] [--width 16] [--batch 64] [--steps 20]

Both sides run the jitted original-model training step of `lotus_jax.methods.supervised` (ResNet-18 CIFAR
variant of the given width on 8×8 digits-sized inputs, BatchNorm, SGD momentum) on identical batches: the
population as `jax.vmap` over a leading member axis (what `lotus_jax.train.population` runs), the sequential
side as N calls of the single-model step per round. Compilation is excluded (one warm-up round each);
images/s counts every member's images. Prints one table row per N.
"""

from __future__ import annotations

import argparse
import functools
import time

import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np

from lotus_jax.data.transforms import Preprocess
from lotus_jax.methods.supervised import train_step
from lotus_jax.models import build_model
from lotus_jax.train.optim import make_optimizer, optimizer_config
from lotus_jax.train.population import stack
from lotus_jax.train.state import TrainState


def make_state(model, tx, key, shape):
    v = model.init({"params": key}, jnp.zeros((1, *shape)), train=False)
    return TrainState.create(apply_fn=model.apply, params=v["params"], tx=tx, batch_stats=v.get("batch_stats", {}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--members", default="1,4,16")
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--image", type=int, default=8)
    p.add_argument("--steps", type=int, default=20)
    args = p.parse_args()
    shape = (args.image, args.image, 1)
    model = build_model(mlc.ConfigDict(dict(name="resnet18", width=args.width, small_conv_size=2)), 10, jnp.float32)
    tx = make_optimizer(optimizer_config("sgd", 0.05, 5e-4, momentum=0.9))
    step = functools.partial(train_step, prep=Preprocess((0.3,), (0.4,)))
    single = jax.jit(step, donate_argnums=0)
    vmapped = jax.jit(jax.vmap(step), donate_argnums=0)
    print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()}; ResNet-18 width {args.width}, "
          f"{args.image}x{args.image} inputs, batch {args.batch} per model, {args.steps} timed steps")
    print("| N | vmapped img/s | one-at-a-time img/s | speed-up |")
    print("|---|---|---|---|")
    for n in [int(x) for x in args.members.split(",")]:
        rng = np.random.default_rng(0)
        batch = {"image": jnp.asarray(rng.integers(0, 256, (n, args.batch, *shape), dtype=np.uint8)),
                 "label": jnp.asarray(rng.integers(0, 10, (n, args.batch)), jnp.int32),
                 "mask": jnp.ones((n, args.batch), bool)}
        keys = jax.random.split(jax.random.key(0), n)
        states = [make_state(model, tx, k, shape) for k in keys]
        pop = stack(states)
        pop, m = vmapped(pop, batch, keys)  # warm-up (compilation)
        jax.block_until_ready(m)
        t = time.perf_counter()
        for _ in range(args.steps):
            pop, m = vmapped(pop, batch, keys)
        jax.block_until_ready(m)
        t_pop = time.perf_counter() - t
        one = [jax.tree.map(lambda x, i=i: x[i], batch) for i in range(n)]
        states[0], m = single(states[0], one[0], keys[0])  # warm-up
        jax.block_until_ready(m)
        t = time.perf_counter()
        for _ in range(args.steps):
            for i in range(n):
                states[i], m = single(states[i], one[i], keys[i])
        jax.block_until_ready(m)
        t_seq = time.perf_counter() - t
        images = n * args.batch * args.steps
        print(f"| {n} | {images / t_pop:.0f} | {images / t_seq:.0f} | {t_seq / t_pop:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
