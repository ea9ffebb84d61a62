#!/usr/bin/env bash
# Issue 6's GPU measurements in one command, sized for one device call (~8-9 min on an H100):
#   1. bench_train's grid: ResNet-50 / ResNet-152 x fp32 / bf16 x batch 8 / 16 / 32 at 512 px (+ peak memory);
#   2. the largest ResNet-152 bf16 batch at 512 px (bench_train --max-batch);
#   3. bench_data per worker on that machine's cores, and what the data module's loader delivers with
#      nproc - 2 workers, batch 32, pinned memory (bench_data --loader-workers);
#   3b. where ResNet-50 bf16's step time goes beyond the trunk (bench_step_parts: network, AdamW foreach vs fused,
#      host issue time, the loader alone and inside the step, in steady state), with the data module's packed
#      batches (3 storages) and with torch's default_collate (13), and the same training through Trainer.fit;
#   4. ResNet-50 neck 128 (the config's) vs 256: overfit AP on the 11 sample images at 512 px, bf16, 600 steps
#      (a capacity check, not COCO val AP);
#   5. if time is left (the steps above stop at their limits): `strongpose.train trainer=gpu` fast_dev_run (the
#      packaged GPU config end to end: uint8 batches, bf16-mixed, COCO-AP callback) and the decode tests with
#      their GPU = CPU case.
# Every line goes to $OUT/gpu_session.log (the device tool brings $OUT back) or ./gpu_session.log.
#
# The device image lacks hydra-core, omegaconf, albumentations, pycocotools & co: carry them as wheels in .whl/
# (git-ignored; see /work/.library/device/README.md), e.g. here:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
#     hydra-core omegaconf antlr4-python3-runtime==4.9.3 albumentations==2.0.8 albucore pycocotools \
#     faster-coco-eval pydantic pydantic-core annotated-types typing-inspection simsimd stringzilla
# (versions as pyproject.toml admits; one version of each)
# then, in one device call with carry [".whl"] and timeout_s=600 (the steps stop at 200+90+40+140+2x50 s):
#   bash experiments/gpu_session.sh
# QUICK=1 runs a tiny version of every step (CPU smoke test: bash experiments/gpu_session.sh with QUICK=1).
set -u
LOG="${OUT:-.}/gpu_session.log"
PY="${PYTHON:-python3}"
if ! $PY -c "import hydra, albumentations, pycocotools" 2>/dev/null && compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    >/dev/null 2>&1 || { echo "wheel install failed" | tee "$LOG"; exit 1; }
  export PYTHONPATH="/tmp/site:$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
fi
export NO_ALBUMENTATIONS_UPDATE=1 WANDB_MODE=disabled PYTHONUNBUFFERED=1
if [ "${QUICK:-0}" = 1 ]; then
  GRID=(--backbone resnet18 --input 128 --batch 2 --precision 32 --steps 1 --rounds 1 --workers 0)
  MAXB=(--backbone resnet18 --input 128 --precision 32 --batch 2 --only-max-batch)
  DATA=(--images 8 --loader-workers 1 --batch 2 --batches 2)
  PARTS=(--backbone resnet18 --input 128 --batch 2 --precision 32 --steps 1 --rounds 1 --workers 1); FIT=(--input 128 --steps 3 --images 2 --precision 32); WORKERS=0
  TG=300 TM=300 TD=300 TP=300 TF=300  # a loaded CPU: time limits that only stop a hang
  TRAINER=default END=100000
else
  W=$(( $(nproc) > 2 ? $(nproc) - 2 : 1 ))
  GRID=(--backbone resnet50 resnet152 --input 512 --batch 8 16 32 --precision 32 bf16 --steps 4 --rounds 3 --workers "$W")
  MAXB=(--backbone resnet152 --input 512 --precision bf16 --batch 32 --only-max-batch)
  DATA=(--images 200 --loader-workers "$W" --batch 32 --batches 40 --pin-memory)
  PARTS=(--backbone resnet50 --input 512 --batch 16 32 --precision bf16 --steps 15 --rounds 2 --workers "$W"
         --collate packed default); FIT=(--input 512 --steps 600 --images 11 --precision bf16); WORKERS=$W
  TG=200 TM=90 TD=40 TP=140 TF=50  # seconds per step: together within one 600-s device command
  TRAINER=gpu END=560         # step 5 runs only in what is left before END seconds
fi
{
  date -u; nvidia-smi --query-gpu=name,memory.total --format=csv 2>/dev/null || echo "no nvidia-smi"
  $PY -c "import torch, lightning; print('torch', torch.__version__, 'lightning', lightning.__version__, 'cuda', torch.cuda.is_available())"
  echo "== bench_train grid (workers $WORKERS)"; timeout $TG $PY experiments/bench_train.py "${GRID[@]}" 2>&1 | grep "^device="
  echo "== largest batch";  timeout $TM $PY experiments/bench_train.py "${MAXB[@]}" 2>&1 | grep "max_batch="
  echo "== bench_data";     timeout $TD $PY experiments/bench_data.py "${DATA[@]}" 2>&1 | tail -2
  echo "== step parts";     timeout $TP $PY experiments/bench_step_parts.py "${PARTS[@]}" 2>&1 | grep "^device="
  for neck in 128 256; do
    echo "== overfit resnet50 neck $neck"
    timeout $TF $PY experiments/overfit.py --backbone resnet50 --neck-channels "$neck" "${FIT[@]}" 2>&1 | grep -E "images, .* steps|^AP=.*loss_start"
  done
  if (( END - SECONDS > 45 )); then
    echo "== train trainer=$TRAINER fast_dev_run"
    timeout $(( END - SECONDS < 90 ? END - SECONDS : 90 )) $PY -m strongpose.train trainer=$TRAINER logger=none \
      trainer.fast_dev_run=true resume=null hydra.run.dir="$(mktemp -d)" 2>&1 | tr '\r' '\n' | grep -E "val/AP=|^Done:|Error" | tail -3
  fi
  if (( END - SECONDS > 20 )); then
    echo "== decode tests"
    timeout $(( END - SECONDS < 60 ? END - SECONDS : 60 )) $PY -m pytest tests/test_codec/test_decode.py -q -p no:cacheprovider 2>&1 | tail -1
  fi
  date -u
} 2>&1 | tee "$LOG"
