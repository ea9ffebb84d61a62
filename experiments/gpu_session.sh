#!/usr/bin/env bash
# Issue 6's open GPU question in one command, sized for one device call (~9 min): does ResNet-50 bf16 at
# 512 px (data-bound on the H200 of 2026-11-26: ratio 0.69-0.73 in steady state) reach 0.8 with the packed
# batches and / or with the keypoint targets encoded on the GPU (data.encode_on=device)? Steps, each stopped at
# its time limit:
#   1. where ResNet-50 bf16's step time goes (bench_step_parts, steady state): batch 16 / 32 x encode_on
#      worker / device with the packed batches, then batch 16 with torch's default_collate (the old batches);
#   2. bench_train's ratio for ResNet-50 bf16, batch 8 / 16 / 32, long blocks (20 steps x 3), encode_on worker
#      and device; ResNet-152 bf16 batch 16 / 32 likewise with encode_on worker (its ratios so far come from
#      4-step blocks);
#   3. bench_data on that machine: one worker's sample, and the loader with nproc - 2 workers, batch 32, pinned
#      memory, encode_on worker vs device;
#   3b. the host waits of a training step of the GPU preset (experiments/count_host_syncs.py on the GPU, and
#      tests/test_scale/test_host_syncs.py's GPU case under torch.cuda.set_sync_debug_mode);
#   4. if time is left: `strongpose.train trainer=gpu data.encode_on=device` fast_dev_run and the codec tests
#      with their GPU = CPU cases (decode, batched encode).
# Done before and recorded in experiments/RESULTS.md (git history of this script has those steps): the full
# 512-px grid with peak memory, the largest ResNet-152 bf16 batch (300 on an H200), the neck 128 / 256 check.
# Every line goes to $OUT/gpu_session.log (the device tool brings $OUT back) or ./gpu_session.log.
#
# The device image lacks hydra-core, omegaconf, albumentations, pycocotools & co: carry them as wheels in .whl/
# (git-ignored; see /work/.library/device/README.md), e.g. here:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
#     hydra-core omegaconf antlr4-python3-runtime==4.9.3 albumentations==2.0.8 albucore pycocotools \
#     faster-coco-eval pydantic pydantic-core annotated-types typing-inspection simsimd stringzilla
# (versions as pyproject.toml admits; one version of each)
# then, in one device call with carry [".whl"] and timeout_s=600 (the steps stop at 170+60+160+45+2x40 s):
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
  W=1
  PARTS=(--backbone resnet18 --input 128 --batch 2 --precision 32 --steps 1 --rounds 1 --workers 1)
  PARTS2=(--batch 2); PB=2; R50=(--backbone resnet18 --input 128 --batch 2 --precision 32 --steps 1 --rounds 1 --workers 1)
  R152=(--backbone resnet18 --input 128 --batch 2 --precision 32 --steps 1 --rounds 1 --workers 0)
  DATA=(--images 8 --loader-workers 1 --batch 2 --batches 2)
  TP=300 TP2=300 TG=300 TD=300 TS=300  # a loaded CPU: time limits that only stop a hang
  HS=cpu
  TRAINER=default END=100000
else
  W=$(( $(nproc) > 2 ? $(nproc) - 2 : 1 ))
  PARTS=(--backbone resnet50 --input 512 --precision bf16 --steps 15 --rounds 2 --workers "$W")
  PARTS2=(--batch 16 32); PB=16
  R50=(--backbone resnet50 --input 512 --batch 8 16 32 --precision bf16 --steps 20 --rounds 3 --workers "$W")
  R152=(--backbone resnet152 --input 512 --batch 16 32 --precision bf16 --steps 20 --rounds 3 --workers "$W")
  DATA=(--images 200 --loader-workers "$W" --batch 32 --batches 40 --pin-memory)
  TP=170 TP2=60 TG=160 TD=45 TS=40  # seconds per step (TG shared by the three bench_train runs): within 600 s
  HS=cuda
  TRAINER=gpu END=560   # step 4 runs only in what is left before END seconds
fi
{
  date -u; nvidia-smi --query-gpu=name,memory.total --format=csv 2>/dev/null || echo "no nvidia-smi"
  $PY -c "import torch, lightning; print('torch', torch.__version__, 'lightning', lightning.__version__, 'cuda', torch.cuda.is_available())"
  echo "== step parts (workers $W)"
  timeout $TP bash -c '"$0" experiments/bench_step_parts.py "$@" --encode-on worker device' "$PY" "${PARTS[@]}" "${PARTS2[@]}" 2>&1 | grep "^device="
  timeout $TP2 $PY experiments/bench_step_parts.py "${PARTS[@]}" --batch "$PB" --collate default 2>&1 | grep "^device="
  echo "== bench_train, long blocks"
  G0=$SECONDS
  for enc in worker device; do
    timeout $(( TG - (SECONDS - G0) > 10 ? TG - (SECONDS - G0) : 10 )) $PY experiments/bench_train.py "${R50[@]}" --encode-on $enc 2>&1 | grep "^device="
  done
  timeout $(( TG - (SECONDS - G0) > 10 ? TG - (SECONDS - G0) : 10 )) $PY experiments/bench_train.py "${R152[@]}" 2>&1 | grep "^device="
  echo "== bench_data";     timeout $TD $PY experiments/bench_data.py "${DATA[@]}" --encode-on worker device 2>&1 | tail -3
  echo "== host waits per training step (the CPU count, then torch.cuda.set_sync_debug_mode's)"
  timeout $TS $PY experiments/count_host_syncs.py --device $HS --epochs 2 2>&1 | tr '\r' '\n' | sed -n '/without logging wait/,$p'
  timeout $TS $PY -m pytest tests/test_scale/test_host_syncs.py -q -p no:cacheprovider -k on_a_gpu 2>&1 | tail -4
  if (( END - SECONDS > 45 )); then
    echo "== train trainer=$TRAINER data.encode_on=device fast_dev_run"
    timeout $(( END - SECONDS < 90 ? END - SECONDS : 90 )) $PY -m strongpose.train trainer=$TRAINER logger=none data.encode_on=device \
      trainer.fast_dev_run=true resume=null hydra.run.dir="$(mktemp -d)" 2>&1 | tr '\r' '\n' | grep -E "val/AP=|^Done:|Error" | tail -3
  fi
  if (( END - SECONDS > 20 )); then
    echo "== codec tests (GPU = CPU cases)"
    timeout $(( END - SECONDS < 60 ? END - SECONDS : 60 )) $PY -m pytest tests/test_codec/test_decode.py tests/test_codec/test_encode.py -q -p no:cacheprovider 2>&1 | tail -1
  fi
  date -u
} 2>&1 | tee "$LOG"
