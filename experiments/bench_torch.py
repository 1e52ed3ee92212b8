"""The PyTorch (CPU) reference point for `bench_step.py`: the same ResNet-18 graph, LoTUS loss and optimizer.

    python experiments/bench_torch.py [--batch 128] [--steps 5] [--warmup 1] [--eval 2048] [--eval-batch 512]
        [--memory-format contiguous|channels_last] [--threads N]

Benchmark-time only: torch is not a dependency of lotus_jax or its tests (install it beside the package, e.g.
`pip install --target /tmp/torchlib torch==2.13.0` and run with `PYTHONPATH=/tmp/torchlib`). The graph is
lotus_jax's CIFAR ResNet-18 (width 64; 3x3 stem, 3x3/2 max-pool, 4 stages x 2 BasicBlocks, a 1x1 identity
conv on every block, global average pool, fc), on 32x32x3 uint8 inputs normalised in the step, 10 classes.
One step = teacher forward (eval mode, no grad) -> Gumbel targets (soft at tau=2 for every other row,
one-hot Gumbel-max samples for the rest) -> student forward in train mode -> soft cross-entropy -> backward
-> AdamW (lr 1e-4, wd 5e-4). Timing as in bench_step.py: each step from start to end (CPU ops are
synchronous), median of `--steps` after `--warmup`; evaluation is one pass of eval-mode forwards over
`--eval` random images in batches of `--eval-batch`, after one warm-up batch, with per-batch correct counts
and confidences brought to the host as lotus_jax's evaluation does.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.identity_conv = nn.Conv2d(cin, cout, 1, stride, 0, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + self.identity_conv(x))


class ResNet18(nn.Module):
    def __init__(self, num_classes: int = 10, width: int = 64) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        blocks, cin = [], width
        for mult, stride in zip((1, 2, 4, 8), (1, 2, 2, 2)):
            blocks += [BasicBlock(cin, width * mult, stride), BasicBlock(width * mult, width * mult, 1)]
            cin = width * mult
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
        x = self.blocks(x)
        return self.fc(x.mean(dim=(2, 3)))


MEAN = torch.tensor([0.5, 0.5, 0.5]).view(1, 3, 1, 1)
STD = torch.tensor([0.5, 0.5, 0.5]).view(1, 3, 1, 1)


def prep(images: torch.Tensor, memory_format: torch.memory_format) -> torch.Tensor:
    """uint8 NHWC -> normalised float32 NCHW in the requested memory format."""
    x = images.permute(0, 3, 1, 2).float().div_(255.0)
    return ((x - MEAN) / STD).contiguous(memory_format=memory_format)


def gumbel_like(z: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    u = torch.rand(z.shape, generator=generator).clamp_(1e-20, 1.0)
    return -torch.log(-torch.log(u))


def lotus_step(student: nn.Module, teacher: nn.Module, opt: torch.optim.Optimizer, batch: dict, tau: float,
               generator: torch.Generator, memory_format: torch.memory_format) -> float:
    x = prep(batch["image"], memory_format)
    with torch.no_grad():
        z = teacher(x)
        soft = F.softmax((z + gumbel_like(z, generator)) / tau, dim=-1)
        hard = F.one_hot((z + gumbel_like(z, generator)).argmax(-1), z.shape[-1]).float()
        targets = torch.where(batch["forget"][:, None], soft, hard)
    logits = student(x)
    loss = -(targets * F.log_softmax(logits, dim=-1)).sum(-1).mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return float(loss.detach())


def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch: int,
             memory_format: torch.memory_format) -> tuple[np.ndarray, np.ndarray]:
    correct, confidence = [], []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            probs = F.softmax(model(prep(images[i:i + batch], memory_format)), dim=-1)
            y = labels[i:i + batch]
            correct.append((probs.argmax(-1) == y).numpy())
            confidence.append(probs.gather(1, y[:, None])[:, 0].numpy())
    return np.concatenate(correct), np.concatenate(confidence)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--eval", type=int, default=2048)
    p.add_argument("--eval-batch", type=int, default=512)
    p.add_argument("--memory-format", choices=("contiguous", "channels_last"), default="contiguous")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    fmt = getattr(torch, "channels_last" if args.memory_format == "channels_last" else "contiguous_format")
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    teacher = ResNet18().to(memory_format=fmt).eval()
    student = ResNet18().to(memory_format=fmt)
    student.load_state_dict(teacher.state_dict())
    student.train()
    opt = torch.optim.AdamW(student.parameters(), lr=1e-4, weight_decay=5e-4)
    rng = np.random.default_rng(args.seed)
    batch = {"image": torch.from_numpy(rng.integers(0, 256, (args.batch, 32, 32, 3), dtype=np.uint8)),
             "forget": torch.from_numpy(np.arange(args.batch) % 2 == 0)}
    times = []
    for i in range(args.warmup + args.steps):
        start = time.perf_counter()
        lotus_step(student, teacher, opt, batch, 2.0, generator, fmt)
        if i >= args.warmup:
            times.append(time.perf_counter() - start)
    step_s = statistics.median(times)

    images = torch.from_numpy(rng.integers(0, 256, (args.eval, 32, 32, 3), dtype=np.uint8))
    labels = torch.from_numpy(rng.integers(0, 10, args.eval))
    evaluate(teacher, images[:args.eval_batch], labels[:args.eval_batch], args.eval_batch, fmt)
    start = time.perf_counter()
    correct, _ = evaluate(teacher, images, labels, args.eval_batch, fmt)
    eval_s = time.perf_counter() - start
    assert len(correct) == args.eval
    print(f"torch {torch.__version__} threads={torch.get_num_threads()} {args.memory_format}: "
          f"step {1e3 * step_s:.1f} ms  {args.batch / step_s:.1f} img/s  eval {args.eval / eval_s:.1f} img/s")


if __name__ == "__main__":
    main()
