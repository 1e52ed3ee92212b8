#!/usr/bin/env bash
# CIFAR-10 comparison of LoTUS and the eight baselines at a scale a 2-core CPU finishes in about an hour.
#
#     bash experiments/cifar10_reproduction.sh [path/to/cifar10-jpeg.tar.gz] [workdir]
#
# Reduced from the paper (docs/definitions.md §7, §8), and nothing else:
#   - 2,000 training images per class (20,000 of 50,000); all 10,000 test images (val 5,000 / test 5,000);
#   - ResNet-18 of width 16 (stage widths 16/32/64/128 instead of 64/128/256/512);
#   - original and gold models trained 25 epochs (batch 128, lr 0.05, cosine, 1 warm-up epoch), not 150;
#   - one seed (3407), not three.
# Unlearning uses the paper's settings: 10% of each class forgotten, every method 10 epochs at its docs/definitions.md §4
# hyper-parameters, LoTUS lr 1e-4, batch 128, alpha 8. The results page is experiments/results/cifar10/.
set -euo pipefail
cd "$(dirname "$0")/.."
data=${1:-../shared/data/cifar10-jpeg.tar.gz}
workdir=${2:-runs/cifar10_repro}
if [ ! -e "$data" ]; then
  echo "CIFAR-10 archive not found at $data; pass its path as the first argument" >&2
  exit 1
fi
python -m lotus_jax.main --config configs/cifar10.py --workdir "$workdir" \
  --config.data.source=folder --config.data.path="$data" \
  --config.data.train_per_class=2000 \
  --config.model.width=16 \
  --config.train.epochs=25 --config.train.batch_size=128 --config.train.optimizer.lr=0.05 \
  --config.train.optimizer.warmup_epochs=1 \
  --config.retrain.epochs=25 --config.retrain.batch_size=128 --config.retrain.optimizer.lr=0.05 \
  --config.retrain.optimizer.warmup_epochs=1
out=experiments/results/cifar10
mkdir -p "$out"
cp "$workdir"/report.md "$workdir"/metrics.json "$workdir"/*.png "$out"/
