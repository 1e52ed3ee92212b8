"""ImageNet input throughput: JPEG decode + resize 256 + centre crop 224 per core, and the decoded cache.

    python experiments/bench_input.py [--n 256] [--workers N] [--batch 128] [--quality 88] [--cached-epochs 20]
        [--repeats 2] [--seed 0]

Makes `--n` ImageNet-sized JPEGs in a temporary folder (500x375, every fourth 375x500; a smooth colour field,
a finer texture and luminance noise, quality 88: about 110 KB each, as ImageNet's), then times, with 1 thread
and with `--workers` threads (default: every core this process may use), the project's decode path for
encoded sources (`LazySource` with `_decode_image` and `ResizeCrop("center", 256, 224)`, what tfds ImageNet
reads go through):

- `decode`: `LazySource.get` over all images (decode + convert + resize + crop, no loader);
- `loader, uncached`: one `EpochLoader` epoch (grain threads decode example by example, batches put on the
  device), as the unlearning stage reads a source without the cache;
- `cache build`: the one-time decode of all images into a `CachedSource` (`cache_source`, threads);
- `loader, cached (memory | .npy memmap)`: `--cached-epochs` `EpochLoader` epochs over the cached examples
  (whole-batch gathers), in memory and from the on-disk cache file (in the page cache).

Prints one table (best of `--repeats`) and, from the 1-thread decode rate (img/s per core), the decode cores
a device step of R img/s needs without the cache, for R = 1500 and 3000 (a ViT-B/16 LoTUS step on one H100).
Runs in well under a minute on 2 cores.
"""

from __future__ import annotations

import argparse
import io
import math
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from lotus_jax.data import pipeline
from lotus_jax.data.cache import cache_source
from lotus_jax.data.loader import EpochLoader
from lotus_jax.data.sources import LazySource, ResizeCrop, _decode_image, available_cores

DEVICE_RATES = (1500, 3000)
IMAGENET_LOTUS = 5_000 + 13_500  # D_f + D_r' of configs/imagenet.py (5 forget, 30% of 45 retain per class)
IMAGENET_UNLEARN = 5_000 + 45_000  # D_f + D_r: what data.cache_unlearning caches


def natural_image(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """A photo-like uint8 image: a smooth random colour field, a finer texture and luminance noise."""
    small = rng.integers(0, 256, (int(rng.integers(3, 7)), int(rng.integers(3, 7)), 3), np.uint8)
    base = np.asarray(Image.fromarray(small).resize((w, h), Image.BICUBIC), np.float32)
    fine = rng.integers(0, 256, (h // 3, w // 3, 3), np.uint8)
    texture = np.asarray(Image.fromarray(fine).resize((w, h), Image.BICUBIC), np.float32)
    noise = rng.normal(0, float(rng.uniform(12, 24)), (h, w, 1)).astype(np.float32)
    return np.clip(0.6 * base + 0.4 * texture + noise, 0, 255).astype(np.uint8)


def make_jpegs(folder: Path, n: int, quality: int, seed: int) -> list[Path]:
    rng = np.random.default_rng(seed)
    files = []
    for i in range(n):
        w, h = (375, 500) if i % 4 == 3 else (500, 375)
        buf = io.BytesIO()
        Image.fromarray(natural_image(rng, w, h)).save(buf, format="JPEG", quality=quality)
        files.append(folder / f"{i:05d}.JPEG")
        files[-1].write_bytes(buf.getvalue())
    return files


def best_rate(fn, images: int, repeats: int) -> float:
    """Images per second of `fn()` (which handles `images` images), best of `repeats` runs."""
    best = math.inf
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return images / best


def drain(loader: EpochLoader) -> None:
    with loader as it:
        for batch in it:
            batch["image"].block_until_ready()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=256)
    p.add_argument("--workers", type=int, default=available_cores())
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--quality", type=int, default=88)
    p.add_argument("--cached-epochs", type=int, default=20)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    with tempfile.TemporaryDirectory(prefix="lotus_jax_bench_input_") as tmp:
        folder = Path(tmp)
        t = time.perf_counter()
        files = make_jpegs(folder, args.n, args.quality, args.seed)
        kb = np.mean([f.stat().st_size for f in files]) / 1024
        print(f"{args.n} JPEGs (500x375 / 375x500, quality {args.quality}, mean {kb:.0f} KB) made in "
              f"{time.perf_counter() - t:.1f}s; {available_cores()} core(s) available, --workers {args.workers}")

        rc = ResizeCrop("center", 256, 224, "bilinear")

        def source(workers: int) -> LazySource:
            return LazySource(lambda idx: [files[i].read_bytes() for i in idx], lambda b: _decode_image(b, 3, rc),
                              np.zeros(len(files), np.int32), ("x",), (224, 224, 3), decode_workers=workers)

        mesh, idx = pipeline.make_mesh(1), np.arange(args.n)
        rows: list[tuple[str, int, float]] = []
        thread_counts = sorted({1, args.workers})
        for w in thread_counts:
            rows.append(("decode + resize 256 + crop 224", w, best_rate(lambda w=w: source(w).get(idx), args.n,
                                                                         args.repeats)))
        for w in thread_counts:
            rows.append(("loader, uncached", w, best_rate(
                lambda w=w: drain(EpochLoader(source(1), idx, args.batch, mesh, shuffle_seed=0, num_threads=w)),
                args.n, args.repeats)))
        cache_file = folder / "cache" / "train.npy"
        built = {}

        def build() -> None:
            cache_file.unlink(missing_ok=True)
            built["disk"] = cache_source(source(1), idx, workers=args.workers, path=cache_file)

        rows.append(("cache build (one-time decode)", args.workers, best_rate(build, args.n, args.repeats)))
        built["memory"] = cache_source(source(1), idx, workers=args.workers)
        for kind in ("memory", "disk"):
            cached = built[kind]
            name = "loader, cached (memory)" if kind == "memory" else "loader, cached (.npy memmap)"
            rows.append((name, 1, best_rate(
                lambda c=cached: [drain(EpochLoader(c, idx, args.batch, mesh, shuffle_seed=e, num_threads=1))
                                  for e in range(args.cached_epochs)],
                args.n * args.cached_epochs, args.repeats)))

    print()
    print("| path | threads | img/s | img/s per thread |")
    print("|---|---|---|---|")
    for name, w, rate in rows:
        print(f"| {name} | {w} | {rate:,.0f} | {rate / w:,.0f} |")
    per_core = rows[0][2]
    print()
    print(f"per-core decode + resize 256 + centre crop 224: {per_core:.0f} img/s (1 thread)")
    for r in DEVICE_RATES:
        print(f"a device step of {r} img/s needs {math.ceil(r / per_core)} decode cores without the cache")
    build_rate = next(rate for name, _, rate in rows if name.startswith("cache build"))
    for what, n in (("LoTUS D_f + D_r'", IMAGENET_LOTUS), ("D_f + D_r (data.cache_unlearning)", IMAGENET_UNLEARN)):
        print(f"ImageNet {what}: {n:,} images, {n * 224 * 224 * 3 / 2**30:.1f} GiB cached, decoded once in "
              f"{n / build_rate:.0f}s at this machine's {build_rate:.0f} img/s")


if __name__ == "__main__":
    main()
