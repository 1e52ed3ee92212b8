#!/bin/bash
# The accelerator checks, each part under its own time limit, all output to $OUT/gpu_check.log:
#
#     OUT=/tmp/gpu_check bash experiments/gpu_check.sh [part ...]
#
# Parts (default: all, about 11 min on one H200; a 10-minute call runs a few at a time):
#   step       LoTUS step throughput and MFU, ResNet-18 (batch 256) then ViT-B/16 (batch 128), float32 and
#              bfloat16 (each row printed when measured; a ResNet row took about 40 s there, compilation included)
#   ensemble   population against one-at-a-time throughput (digits-sized and CIFAR-sized ResNet-18)
#   precision  the bfloat16 tests (tests/methods/test_precision.py) on the accelerator
#   members    vmapped members against their single runs (tests/train/exact_members.py, as a measure)
#   audit      the default job with the audit stage, 16 models per population, vmapped; report and metrics
#              copied to $OUT (the job alone took about 150 s, its audit about 140 s)
#
# Needs lotus_jax's dependencies importable (where ml-collections or grain is missing, install their wheels
# first). Results of a run are in README.md's Benchmarks section.
set -u
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}
header() { echo; echo "== $1 ($(date +%T))"; }

step() {
  header "LoTUS step: ResNet-18 (batch 256) and ViT-B/16 (batch 128), float32 and bfloat16"
  timeout 120 $PY experiments/bench_step.py --models resnet18 --resnet-batch 256 --steps 20 --warmup 3
  timeout 200 $PY experiments/bench_step.py --models vit --vit-batch 128 --steps 20 --warmup 3
}

ensemble() {
  header "population throughput: ResNet-18 width 16 on 8x8 inputs, batch 64 per model"
  timeout 150 $PY experiments/bench_ensemble.py --members 1,4,16,64 --steps 20
  header "population throughput: ResNet-18 width 64 on 32x32 inputs, batch 128 per model"
  timeout 90 $PY experiments/bench_ensemble.py --members 1,8 --width 64 --image 32 --batch 128 --steps 10
}

precision() {
  header "bfloat16 tests on the accelerator"
  JAX_PLATFORMS=cuda timeout 60 $PY -m pytest -q -n 0 -p no:cacheprovider tests/methods/test_precision.py
}

members() {
  header "vmapped members against single runs on the accelerator"
  timeout 150 $PY -c "import tests.train.exact_members as e; e.main(max_devices=1)"
}

audit() {
  header "default job with the audit stage, 16 models per population (vmapped)"
  SECONDS=0
  timeout 400 $PY -m lotus_jax.main --workdir /tmp/gpu_check_run \
    --config.stages=train,retrain,unlearn,evaluate,audit --config.audit.models=16
  echo "exit $?, wall ${SECONDS} s (a rerun resumes /tmp/gpu_check_run)"
  cp /tmp/gpu_check_run/report.md /tmp/gpu_check_run/metrics.json "$OUT/" 2>/dev/null
}

parts=("$@")
[ ${#parts[@]} -eq 0 ] && parts=(step ensemble precision members audit)
{
  header "machine"
  nvidia-smi -L 2>/dev/null
  $PY -c "import jax, flax, optax, chex; print('jax', jax.__version__, 'flax', flax.__version__, 'optax',
optax.__version__, 'chex', chex.__version__, jax.devices())"
  for part in "${parts[@]}"; do
    case "$part" in
      step|ensemble|precision|members|audit) "$part" ;;
      *) echo "unknown part $part; valid: step ensemble precision members audit"; exit 2 ;;
    esac
  done
  header "done"
} 2>&1 | tee -a "$OUT/gpu_check.log"
