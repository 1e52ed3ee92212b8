#!/bin/bash
# The accelerator checks in one go, each part under its own time limit, all output to $OUT/gpu_check.log:
# step throughput and MFU (float32 and bfloat16), population throughput, bf16 correctness tests, vmapped
# members against their single runs, and the default job with the audit stage (16 models per population).
#
#     OUT=/tmp/gpu_check bash experiments/gpu_check.sh
#
# Needs lotus_jax's dependencies importable (on a machine without ml-collections or grain, install their
# wheels first). Results of a run are in README.md's Benchmarks section.
set -u
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}
part() { echo; echo "== $1 ($(date +%T))"; }
{
  part "machine"
  nvidia-smi -L 2>/dev/null
  $PY -c "import jax, flax, optax, chex, orbax.checkpoint as o; print('jax', jax.__version__, 'flax', flax.__version__,
'optax', optax.__version__, 'chex', chex.__version__, jax.devices())"

  part "LoTUS step: ResNet-18 (batch 256) and ViT-B/16 (batch 128), float32 and bfloat16"
  timeout 160 $PY experiments/bench_step.py --resnet-batch 256 --vit-batch 128 --steps 20 --warmup 3

  part "population throughput: ResNet-18 width 16 on 8x8 inputs, batch 64 per model"
  timeout 60 $PY experiments/bench_ensemble.py --members 1,4,16,64 --steps 20
  part "population throughput: ResNet-18 width 64 on 32x32 inputs, batch 128 per model"
  timeout 45 $PY experiments/bench_ensemble.py --members 1,8 --width 64 --image 32 --batch 128 --steps 10

  part "bfloat16 correctness tests on the accelerator"
  JAX_PLATFORMS=cuda timeout 45 $PY -m pytest -q -n 0 -p no:cacheprovider tests/methods/test_precision.py

  part "vmapped members against single runs on the accelerator (largest parameter difference)"
  timeout 80 $PY -c "import tests.train.exact_members as e; e.main(max_devices=1)"

  part "default job with the audit stage, 16 models per population (vmapped)"
  rm -rf /tmp/gpu_check_run
  SECONDS=0
  timeout "${AUDIT_LIMIT:-150}" $PY -m lotus_jax.main --workdir /tmp/gpu_check_run \
    --config.stages=train,retrain,unlearn,evaluate,audit --config.audit.models=16
  echo "exit $?, wall ${SECONDS} s"
  cp /tmp/gpu_check_run/report.md "$OUT/report.md" 2>/dev/null
  cp /tmp/gpu_check_run/metrics.json "$OUT/metrics.json" 2>/dev/null
  part "done"
} 2>&1 | tee "$OUT/gpu_check.log"
