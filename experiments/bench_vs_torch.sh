#!/usr/bin/env bash
# lotus_jax's LoTUS step and evaluation against PyTorch's (CPU) on the same graph, loss and batch, alternating.
#
#     bash experiments/bench_vs_torch.sh [rounds] [path/with/torch]
#
# torch is not a dependency of the package: install it beside it first, e.g.
#     pip install --target /tmp/torchlib torch==2.13.0
# and pass that folder as the second argument (default /tmp/torchlib). Each round runs bench_step.py (ResNet-18
# width 64, 32x32, batch 128, float32, evaluation in batches of 512) and then bench_torch.py; compare rounds
# measured side by side only.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-2}
torchlib=${2:-/tmp/torchlib}
for round in $(seq "$rounds"); do
  echo "== round $round"
  python experiments/bench_step.py --models resnet18 --dtypes float32 --steps 5 --resnet-eval 2048 | tail -4 | head -3
  PYTHONPATH="$torchlib" python experiments/bench_torch.py --steps 5 --eval 2048
done
