#!/usr/bin/env bash
# CIFAR-10 in a regime where the original model memorises its forget set, sized for a 2-core CPU (~165 min):
# instance unlearning with three seeds, class unlearning, LoTUS variants for the RF-JSD/JSD correlation.
#
#     bash experiments/cifar10_memorising.sh [path/to/cifar10-jpeg.tar.gz] [workdir]
#
# Rerunning the same command continues where it stopped (every stage checkpoints; finished stages are skipped).
# The recipe (why: fewer images and no augmentation memorise fastest):
#   - 400 training images per class (4,000), 200 held-out per class (val 1,000 / test 1,000);
#   - ResNet-18 of width 16; original and gold trained 25 epochs, batch 128, SGD lr 0.05 momentum 0.9,
#     cosine after 1 warm-up epoch, no augmentation (original/gold and unlearning alike);
#   - unlearning with the paper's settings: 10% of each class forgotten, every method 10 epochs at its
#     settings (SGD baselines with momentum 0.9), LoTUS lr 1e-4, batch 128, alpha 8; seeds 3407, 13, 12;
#   - class unlearning: class 0 (airplane) forgotten, LoTUS alpha 32, seeds 3407, 13, 12, each from that seed's
#     original model of the instance runs;
#   - LoTUS variants (alpha 2 and 32, 3 epochs) per seed for more points in the correlation;
#   - the per-example audit on the same data at width 8 (seed 3407): its own original model, all nine methods,
#     then 16 gold models and 16 unlearned models per audited method (LoTUS, Finetune, Random labels, SCRUB).
# The results page is experiments/results/cifar10_memorising/.
set -euo pipefail
cd "$(dirname "$0")/.."
data=${1:-../shared/data/cifar10-jpeg.tar.gz}
work=${2:-runs/cifar10_memorising}
if [ ! -e "$data" ]; then
  echo "CIFAR-10 archive not found at $data; pass its path as the first argument" >&2
  exit 1
fi
common=(--config configs/cifar10.py
  --config.data.source=folder --config.data.path="$data"
  --config.data.train_per_class=400 --config.data.heldout_per_class=200
  --config.data.augment=none --config.data.unlearn_augment=False
  --config.model.width=16 --config.eval.batch_size=500)
for stage in train retrain; do
  common+=(--config."$stage".epochs=25 --config."$stage".batch_size=128 --config."$stage".optimizer.lr=0.05
           --config."$stage".optimizer.warmup_epochs=1)
done

# 1. Instance unlearning, all nine methods, three seeds (table as mean ± std).
python -m lotus_jax.main "${common[@]}" --workdir "$work/instance" --config.seeds=3407,13,12

# 2. LoTUS variants on every seed, from that seed's original and gold models.
for seed in 3407 13 12; do
  run="$work/instance/seed_$seed"
  for variant in "alpha=2.0" "alpha=32.0" "epochs=3"; do
    python -m lotus_jax.main "${common[@]}" --workdir "$work/variants/seed_${seed}_${variant/=/_}" \
      --config.seed="$seed" --config.methods=lotus --config.lotus."$variant" \
      --config.original_checkpoint="$run/checkpoints/original" --config.gold_checkpoint="$run/checkpoints/gold"
  done
done

# 3. The per-example audit (width 8 so that 16 + 4 x 16 models fit the time): populations vmapped, as on the
#    results page (without --config.audit.vmap=True a CPU trains the members one after another: faster, and
#    each member bit for bit its single run).
python -m lotus_jax.main "${common[@]}" --config.model.width=8 --workdir "$work/audit" --config.seed=3407 \
  --config.stages=train,retrain,unlearn,evaluate,audit --config.audit.models=16 --config.audit.vmap=True

# 4. Class unlearning: class 0, each seed from its original model; gold retrained without the class.
python -m lotus_jax.main "${common[@]}" --workdir "$work/class" --config.seeds=3407,13,12 \
  --config.data.forget.mode=class --config.data.forget.classes=0 --config.lotus.alpha=32.0 \
  --config.original_checkpoint="$work/instance/seed_{seed}/checkpoints/original"

# 5. RF-JSD against JSD across every (method, seed) and variant.
python experiments/rfjsd_correlation.py "$work" --out experiments/results/cifar10_memorising

out=experiments/results/cifar10_memorising
mkdir -p "$out/instance" "$out/class" "$out/audit"
for part in instance class audit; do
  cp "$work/$part"/report.md "$work/$part"/metrics.json "$work/$part"/*.png "$out/$part/"
done
