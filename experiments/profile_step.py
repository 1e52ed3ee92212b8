"""Where the ResNet-18 LoTUS step's time goes on this backend: per-layer forward and forward+backward timings.

    python experiments/profile_step.py [--batch 128] [--width 64] [--repeats 5]

Each distinct convolution of the CIFAR ResNet-18 (input 32x32) is timed alone, jitted, at the step's batch
size, under both lowerings `models/conv.Conv` can choose: `lax.conv_general_dilated` and the im2col
matmul. "fwd" is the forward convolution; "fwd+bwd" is `jax.value_and_grad` with respect to
the input and the kernel (what training runs). The BatchNorm (train mode, masked statistics) + ReLU and the
max-pool are timed the same way. Times are medians of `--repeats` calls after one warm-up. The last lines
weigh every layer by how often the network runs it and compare the sum with the whole step
(`bench_step.py`): one teacher forward + one student forward/backward.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lotus_jax  # noqa: F401  (sets the package's XLA CPU flags before the backend starts)
from lotus_jax.models.conv import im2col_conv
from lotus_jax.models.resnet import _batch_norm


def timeit(fn: Callable, *args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def conv_fns(stride: int, pad: int, lowering: str) -> tuple[Callable, Callable]:
    padding = ((pad, pad), (pad, pad))

    def conv(x, k):
        if lowering == "lax":
            return jax.lax.conv_general_dilated(x, k, (stride, stride), padding,
                                                dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return im2col_conv(x, k, (stride, stride), padding, jnp.float32)

    def loss(x, k):
        return jnp.sum(conv(x, k) ** 2) * 0.5

    return jax.jit(conv), jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))


def resnet_convs(width: int) -> list[tuple[str, int, int, int, int, int, int]]:
    """(name, in_size, cin, cout, kernel, stride, count) for every distinct conv of the CIFAR ResNet-18."""
    convs = [("stem 3x3", 32, 3, width, 3, 1, 1)]
    size, cin = 16, width
    for stage, (mult, stride) in enumerate(zip((1, 2, 4, 8), (1, 2, 2, 2)), start=1):
        cout = width * mult
        out = size // stride
        convs.append((f"layer{stage} 3x3/{stride} {size}->{out}", size, cin, cout, 3, stride, 1))
        convs.append((f"layer{stage} 3x3 {out}", out, cout, cout, 3, 1, 3))
        convs.append((f"layer{stage} 1x1/{stride} {size}->{out}", size, cin, cout, 1, stride, 1))
        convs.append((f"layer{stage} 1x1 {out}", out, cout, cout, 1, 1, 1))
        size, cin = out, cout
    return convs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    rng = np.random.default_rng(0)
    n = args.batch
    print(f"{jax.default_backend()} batch {n} width {args.width}; ms per call, median of {args.repeats}")
    print(f"{'layer':28s} {'count':>5s} {'GFLOP':>7s} {'lax fwd':>8s} {'shift fwd':>9s} "
          f"{'lax f+b':>8s} {'shift f+b':>9s} {'best f+b GFLOP/s':>16s}")
    totals = {"lax": [0.0, 0.0], "im2col": [0.0, 0.0], "best": [0.0, 0.0]}
    for name, size, cin, cout, k, stride, count in resnet_convs(args.width):
        pad = 1 if k == 3 else 0
        x = jnp.asarray(rng.standard_normal((n, size, size, cin)), jnp.float32)
        w = jnp.asarray(rng.standard_normal((k, k, cin, cout)) * 0.05, jnp.float32)
        out = (size + 2 * pad - k) // stride + 1
        gflop = 2 * n * out * out * cin * cout * k * k / 1e9
        row = {}
        for lowering in ("lax", "im2col"):
            fwd, fb = conv_fns(stride, pad, lowering)
            row[lowering] = (timeit(fwd, x, w, repeats=args.repeats), timeit(fb, x, w, repeats=args.repeats))
            totals[lowering][0] += count * row[lowering][0]
            totals[lowering][1] += count * row[lowering][1]
        best = min(row["lax"][1], row["im2col"][1])
        totals["best"][0] += count * min(row["lax"][0], row["im2col"][0])
        totals["best"][1] += count * best
        print(f"{name:28s} {count:5d} {gflop:7.3f} {1e3 * row['lax'][0]:8.2f} {1e3 * row['im2col'][0]:9.2f} "
              f"{1e3 * row['lax'][1]:8.2f} {1e3 * row['im2col'][1]:9.2f} {3 * gflop / best:16.1f}")

    bn_total = 0.0
    sizes = [(32, args.width, 1)] + [(s, args.width * m, 4) for s, m in ((16, 1), (8, 2), (4, 4), (2, 8))]
    for size, c, count in sizes:
        x = jnp.asarray(rng.standard_normal((n, size, size, c)), jnp.float32)
        mask = jnp.ones((n, 1, 1, 1), bool)
        bn = _batch_norm("bn", True, jnp.float32)
        variables = bn.init(jax.random.key(0), x, mask=mask)

        def bn_loss(params, x, variables=variables, bn=bn, mask=mask):
            y, _ = bn.apply({**variables, "params": params}, x, mask=mask, mutable=["batch_stats"])
            return jnp.sum(jax.nn.relu(y) ** 2)

        fb = jax.jit(jax.value_and_grad(bn_loss, argnums=(0, 1)))
        t = timeit(fb, variables["params"], x, repeats=args.repeats)
        bn_total += count * t
        print(f"BN+ReLU f+b {size}x{size}x{c:<4d} x{count}: {1e3 * t:.2f} ms")
    x = jnp.asarray(rng.standard_normal((n, 32, 32, args.width)), jnp.float32)

    def pool_loss(x):
        return jnp.sum(jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 2, 2, 1),
                                             ((0, 0), (1, 1), (1, 1), (0, 0))))

    pool = timeit(jax.jit(jax.value_and_grad(pool_loss)), x, repeats=args.repeats)
    print(f"max-pool f+b: {1e3 * pool:.2f} ms")
    print()
    for lowering in ("lax", "im2col", "best"):
        fwd, fb = totals[lowering]
        print(f"convs, {lowering:5s}: teacher fwd {1e3 * fwd:7.1f} ms + student f+b {1e3 * fb:7.1f} ms "
              f"= {1e3 * (fwd + fb):7.1f} ms")
    print(f"BN+ReLU f+b total {1e3 * bn_total:.1f} ms, max-pool {1e3 * pool:.1f} ms")


if __name__ == "__main__":
    main()
