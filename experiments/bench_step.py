"""Throughput and MFU of one jitted LoTUS update step, and of an evaluation pass, per model and dtype.

    python experiments/bench_step.py [--models resnet18,vit] [--dtypes float32,bfloat16] [--resnet-batch 128]
        [--vit-batch N] [--vit-variant B/16] [--steps N] [--warmup N] [--peak-tflops T]

Models: ResNet-18 (width 64) on 32x32x3 inputs with 10 classes; ViT (default B/16) on 224x224x3 inputs with
1000 classes. Variables are random (speed does not depend on them); the teacher is the same variables, the
optimizer AdamW lr 1e-4, the batch random uint8 images with every other row flagged forget and a full mask,
sharded over a 1-D mesh of all devices exactly as in training.

Step time: after compiling (`lower().compile()`) and `--warmup` steps, each of `--steps` steps is timed on
its own (dispatch to `block_until_ready`); the table reports the median. FLOPs per step come from XLA's
cost analysis of the compiled (per-device) program, multiplied by the number of devices:

    achieved TFLOP/s = flops_per_device * n_devices / median_step_s / 1e12
    MFU              = flops_per_device / median_step_s / peak_flops_per_device

The peak is looked up by `device_kind` in PEAK_TFLOPS (dense figures, H100/H200 as SXM parts) or given with
`--peak-tflops`; unknown devices, including CPUs, print MFU as n/a. Evaluation: one full pass as
`Context.evaluate` makes it (`EpochLoader` device batches -> jitted `make_eval_fn` -> `evaluate_batches` host
statistics) over random examples, timed after a compiling pass over one batch. The last column is the step
when the teacher's logits come precomputed in the batch (what LoTUS runs when its unlearning batches are not
augmented, `lotus.cache_teacher`): no teacher forward pass.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lotus_jax.data import pipeline  # noqa: E402
from lotus_jax.data.loader import EpochLoader  # noqa: E402
from lotus_jax.data.sources import ArraySource, Source  # noqa: E402
from lotus_jax.data.transforms import Preprocess  # noqa: E402
from lotus_jax.errors import ConfigError  # noqa: E402
from lotus_jax.evaluate import SplitStats, evaluate_batches, make_eval_fn  # noqa: E402
from lotus_jax.methods.lotus import lotus_step  # noqa: E402
from lotus_jax.models import build_model, vit_variant_config  # noqa: E402
from lotus_jax.train.optim import make_optimizer, optimizer_config  # noqa: E402
from lotus_jax.train.state import TrainState, Variables, create_state, place  # noqa: E402

DTYPES: dict[str, Any] = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}

# Dense peak TFLOP/s per device: (device_kind substring, bfloat16, float32). float32 assumes XLA's default
# matmul precision: TF32 tensor cores on NVIDIA GPUs, bfloat16 passes on TPUs. First match wins.
PEAK_TFLOPS: tuple[tuple[str, float, float], ...] = (
    ("h200", 989.0, 494.0),
    ("h100", 989.0, 494.0),
    ("a100", 312.0, 156.0),
    ("tpu v4", 275.0, 275.0),
    ("tpu v5 lite", 197.0, 197.0),
    ("tpu v5e", 197.0, 197.0),
    ("tpu v5", 459.0, 459.0),
    ("tpu v6 lite", 918.0, 918.0),
    ("tpu v6e", 918.0, 918.0),
)


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """What is benchmarked for one model name: its config, input resolution and class count."""

    name: str
    config: mlc.ConfigDict
    image_size: int
    num_classes: int
    batch_size: int
    eval_examples: int


@dataclasses.dataclass(frozen=True)
class Result:
    """One row of the table."""

    model: str
    dtype: str
    batch: int
    compile_s: float
    step_s: float
    flops_per_device: float
    n_devices: int
    peak_tflops: float | None
    eval_examples: int
    eval_s: float
    cached_step_s: float

    @property
    def images_per_s(self) -> float:
        return self.batch / self.step_s

    @property
    def cached_images_per_s(self) -> float:
        return self.batch / self.cached_step_s

    @property
    def tflop_per_step(self) -> float:
        return self.flops_per_device * self.n_devices / 1e12

    @property
    def achieved_tflops(self) -> float:
        return self.tflop_per_step / self.step_s

    @property
    def mfu(self) -> float | None:
        if self.peak_tflops is None:
            return None
        return self.achieved_tflops / (self.peak_tflops * self.n_devices)

    @property
    def eval_images_per_s(self) -> float:
        return self.eval_examples / self.eval_s


def is_cpu() -> bool:
    return jax.default_backend() == "cpu"


def peak_tflops(device_kind: str, dtype: str, override: float | None) -> float | None:
    """Per-device peak TFLOP/s for `dtype`: the override, else the PEAK_TFLOPS entry, else None (unknown)."""
    if override is not None:
        return override
    kind = device_kind.lower()
    for pattern, bf16, f32 in PEAK_TFLOPS:
        if pattern in kind:
            return bf16 if dtype == "bfloat16" else f32
    return None


def compiled_flops(compiled: Any) -> float:
    """FLOPs of a compiled program from XLA's cost analysis (a dict, or a list of dicts in some jax versions)."""
    analysis = compiled.cost_analysis()
    if isinstance(analysis, dict):
        analysis = [analysis]
    return float(sum(a.get("flops", 0.0) for a in analysis or []))


def model_specs(args: argparse.Namespace) -> dict[str, ModelSpec]:
    """The benchmarked models, with batch sizes and evaluation sizes resolved for the current backend."""
    cpu = is_cpu()
    vit_batch = args.vit_batch if args.vit_batch is not None else (4 if cpu else 256)
    vit_eval = args.vit_eval if args.vit_eval is not None else (8 if cpu else 2048)
    return {
        "resnet18": ModelSpec("resnet18", mlc.ConfigDict(dict(name="resnet18", width=64)), 32, 10,
                              args.resnet_batch, args.resnet_eval),
        "vit": ModelSpec(f"vit-{args.vit_variant}", mlc.ConfigDict(dict(name="vit", variant=args.vit_variant)),
                         224, 1000, vit_batch, vit_eval),
    }


def random_batch(rng: np.random.Generator, batch_size: int, image_size: int, num_classes: int
                 ) -> dict[str, np.ndarray]:
    """A host batch of random uint8 images, every other row flagged forget, all rows valid."""
    return {
        "image": rng.integers(0, 256, (batch_size, image_size, image_size, 3), dtype=np.uint8),
        "label": rng.integers(0, num_classes, batch_size, dtype=np.int32),
        "mask": np.ones(batch_size, bool),
        "forget": (np.arange(batch_size) % 2 == 0).astype(np.int32),
    }


def time_steps(step: Any, state: TrainState, batch: dict, teacher: Variables, tau: jax.Array,
               keys: Sequence[jax.Array]) -> tuple[TrainState, list[float]]:
    """Runs `step` once per key, timing each call from dispatch to completion."""
    times = []
    for key in keys:
        start = time.perf_counter()
        state, metrics = step(state, batch, teacher, tau, key)
        jax.block_until_ready((state, metrics))
        times.append(time.perf_counter() - start)
    return state, times


def evaluate_indices(eval_fn: Any, variables: Variables, source: Source, indices: np.ndarray, batch_size: int,
                     mesh: jax.sharding.Mesh, num_classes: int) -> SplitStats:
    """One evaluation pass over `indices` of `source`, as `Context.evaluate` runs it."""
    with EpochLoader(source, indices, batch_size, mesh) as batches:
        return evaluate_batches(eval_fn, variables, batches, num_classes)


def bench_eval(model: Any, prep: Preprocess, variables: dict, spec: ModelSpec, eval_batch: int,
               mesh: jax.sharding.Mesh, rng: np.random.Generator) -> float:
    """Seconds of one full evaluation pass over `spec.eval_examples` random examples (after compiling)."""
    n = spec.eval_examples
    batch_size = min(eval_batch, n)
    pipeline.check_batch_size(batch_size, mesh)
    source = ArraySource(rng.integers(0, 256, (n, spec.image_size, spec.image_size, 3), dtype=np.uint8),
                         rng.integers(0, spec.num_classes, n, dtype=np.int32),
                         tuple(str(c) for c in range(spec.num_classes)))
    eval_fn = make_eval_fn(model, prep, spec.num_classes)
    indices = np.arange(n)
    evaluate_indices(eval_fn, variables, source, indices[:batch_size], batch_size, mesh, spec.num_classes)
    start = time.perf_counter()
    stats = evaluate_indices(eval_fn, variables, source, indices, batch_size, mesh, spec.num_classes)
    elapsed = time.perf_counter() - start
    assert len(stats.correct) == n
    return elapsed


def bench(spec: ModelSpec, dtype: str, args: argparse.Namespace, mesh: jax.sharding.Mesh) -> Result:
    """Compiles and times the LoTUS step and an evaluation pass for one model and compute dtype."""
    pipeline.check_batch_size(spec.batch_size, mesh)
    key = jax.random.key(args.seed)
    rng = np.random.default_rng(args.seed)
    model = build_model(spec.config, spec.num_classes, DTYPES[dtype])
    prep = Preprocess(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    example = jnp.zeros((1, spec.image_size, spec.image_size, 3), jnp.float32)
    variables = jax.jit(functools.partial(model.init, train=False))({"params": key}, example)
    state = create_state(model, variables, make_optimizer(optimizer_config("adamw", 1e-4)), mesh)
    teacher = place(variables, mesh)
    batch = pipeline.to_device(random_batch(rng, spec.batch_size, spec.image_size, spec.num_classes), mesh)
    tau = place(jnp.float32(2.0), mesh)
    keys = [place(jax.random.fold_in(key, i), mesh) for i in range(args.warmup + args.steps)]

    start = time.perf_counter()
    step = jax.jit(functools.partial(lotus_step, prep=prep), donate_argnums=0)
    compiled = step.lower(state, batch, teacher, tau, keys[0]).compile()
    compile_s = time.perf_counter() - start
    state, _ = time_steps(compiled, state, batch, teacher, tau, keys[:args.warmup])
    state, times = time_steps(compiled, state, batch, teacher, tau, keys[args.warmup:])
    # LoTUS without augmentation reads the teacher's logits precomputed once per run (`lotus.cache_teacher`).
    logits = jax.jit(lambda v, images: model.apply(v, prep(images), train=False))(teacher, batch["image"])
    cached_batch = {**batch, "teacher_logits": logits}
    cached = step.lower(state, cached_batch, teacher, tau, keys[0]).compile()
    state, _ = time_steps(cached, state, cached_batch, teacher, tau, keys[:args.warmup])
    state, cached_times = time_steps(cached, state, cached_batch, teacher, tau, keys[args.warmup:])
    del state

    eval_s = bench_eval(model, prep, teacher, spec, args.eval_batch, mesh, rng)
    kind = jax.devices()[0].device_kind
    return Result(model=spec.name, dtype=dtype, batch=spec.batch_size, compile_s=compile_s,
                  step_s=statistics.median(times), flops_per_device=compiled_flops(compiled),
                  n_devices=mesh.size, peak_tflops=peak_tflops(kind, dtype, args.peak_tflops),
                  eval_examples=spec.eval_examples, eval_s=eval_s, cached_step_s=statistics.median(cached_times))


def format_table(results: Sequence[Result], device: str) -> str:
    """The results as one aligned text table."""
    header = ("device", "model", "dtype", "batch", "compile s", "step ms", "img/s", "TFLOP/step", "TFLOP/s",
              "MFU", "eval n", "eval img/s", "cached-teacher img/s")
    rows = [header]
    for r in results:
        mfu = "n/a" if r.mfu is None else f"{100 * r.mfu:.1f}%"
        rows.append((device, r.model, r.dtype, str(r.batch), f"{r.compile_s:.1f}", f"{1e3 * r.step_s:.1f}",
                     f"{r.images_per_s:.1f}", f"{r.tflop_per_step:.4g}", f"{r.achieved_tflops:.3g}", mfu,
                     str(r.eval_examples), f"{r.eval_images_per_s:.1f}", f"{r.cached_images_per_s:.1f}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) if i < 3 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
             for row in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="resnet18,vit", help="comma-separated: resnet18, vit")
    p.add_argument("--dtypes", default="float32,bfloat16", help="comma-separated compute dtypes")
    p.add_argument("--resnet-batch", type=int, default=128)
    p.add_argument("--vit-batch", type=int, default=None, help="default 256 on GPU/TPU, 4 on CPU")
    p.add_argument("--vit-variant", default="B/16")
    p.add_argument("--steps", type=int, default=None, help="timed steps; default 20 on GPU/TPU, 5 on CPU")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps after compiling; default 3 / 1 (CPU)")
    p.add_argument("--resnet-eval", type=int, default=2048, help="examples in the timed ResNet evaluation pass")
    p.add_argument("--vit-eval", type=int, default=None, help="examples in the ViT evaluation pass; "
                                                              "default 2048 on GPU/TPU, 8 on CPU")
    p.add_argument("--eval-batch", type=int, default=512, help="evaluation batch size (capped at the pass size)")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="per-device peak TFLOP/s for MFU, overriding the device table (needed on CPU)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.steps is None:
        args.steps = 5 if is_cpu() else 20
    if args.warmup is None:
        args.warmup = 1 if is_cpu() else 3
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    specs = model_specs(args)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    for name in models:
        if name not in specs:
            sys.exit(f"error: unknown model {name!r}; valid: {', '.join(specs)}")
    for dtype in dtypes:
        if dtype not in DTYPES:
            sys.exit(f"error: unknown dtype {dtype!r}; valid: {', '.join(DTYPES)}")
    if args.steps < 1 or args.warmup < 0:
        sys.exit("error: --steps must be >= 1 and --warmup >= 0")
    if "vit" in models:
        try:
            vit_variant_config(args.vit_variant)
        except ValueError as e:
            sys.exit(f"error: {e}")

    mesh = pipeline.make_mesh()
    device = f"{jax.default_backend()}:{jax.devices()[0].device_kind} x{mesh.size}"
    print(f"{device}; {args.warmup} warm-up + {args.steps} timed steps (median)", flush=True)
    results = []
    for name in models:
        for dtype in dtypes:
            start = time.perf_counter()
            try:
                results.append(bench(specs[name], dtype, args, mesh))
            except ConfigError as e:
                sys.exit(f"error: {e}")
            r = results[-1]  # each row as soon as it is measured: a run stopped later keeps it
            mfu = "n/a" if r.mfu is None else f"{100 * r.mfu:.1f}%"
            print(f"  {specs[name].name} {dtype}: done in {time.perf_counter() - start:.1f}s: step "
                  f"{1e3 * r.step_s:.1f} ms, {r.images_per_s:.1f} img/s, {r.achieved_tflops:.3g} TFLOP/s, MFU {mfu}, "
                  f"eval {r.eval_images_per_s:.1f} img/s, cached-teacher {r.cached_images_per_s:.1f} img/s",
                  flush=True)
    print()
    print(format_table(results, device))
    peaks = {r.dtype: r.peak_tflops for r in results}
    if any(p is None for p in peaks.values()):
        print("MFU n/a: no peak known for this device (CPUs have none in the table); pass --peak-tflops.")
    for dtype, peak in peaks.items():
        if peak is not None:
            print(f"MFU peak for {dtype}: {peak:g} TFLOP/s per device "
                  f"({'--peak-tflops' if args.peak_tflops is not None else 'device table, dense'}).")


if __name__ == "__main__":
    main()
