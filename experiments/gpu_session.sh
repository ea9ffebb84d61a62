#!/usr/bin/env bash
# Issue 6's open GPU questions in one command, sized for one device call (~9 min). On the H200 of 2026-11-27
# (experiments/RESULTS.md, "Sixteenth session") the full step reached >= 0.8 of the bare trunk in steady state for
# ResNet-152 bf16 and ResNet-50 bf16 at batch 32, not for ResNet-50 bf16 at batches 8 / 16 (0.65 / 0.70-0.72), where
# Python cannot queue the step's 964 operations (the trunk's: 717) as fast as the GPU runs them. Since then the
# frozen BatchNorm of the COCO experiments queues 2 operations a layer instead of 11, the heads run side by side as
# one stack and the loss terms are reduced together (seventeenth session): ResNet-50's step queues 879 operations
# (ceiling 0.82), with the COCO experiment's network 733 (1,347 before; experiments/count_step_ops.py). Through
# Trainer.fit (step 4's fit_ms; 50-52 ms at batch 16 before) the step also makes 6 fewer self.log calls (eighteenth
# session: ~2.4 ms of host time per step on the 2-core VM, experiments/loop_overhead.py). Steps, each
# stopped at its time limit, in order of importance (the log comes back even if the call is cut short):
#   1. bench_train for ResNet-50 bf16 batch 8 / 16 (the network, bench_train's default config), then the
#      COCO experiment's ResNet-50 network (frozen BatchNorm, two 256-wide convolutions a head), batch 8 / 16 / 32;
#   2. bench_train --compile for ResNet-50 bf16 batch 8 / 16, then --compile reduce-overhead at batch 16;
#   3. bench_train in steady state for fp32 (ResNet-50 and ResNet-152, batch 8 / 16 / 32) and ResNet-152 bf16
#      batch 8;
#   4. bench_step_parts for ResNet-50 bf16 batch 16 in steady state (fit_ms: Trainer.fit with the config's
#      callbacks, against full_ms);
#   5. if time is left: the host waits of a training step of the GPU preset (count_host_syncs on the GPU and
#      tests/test_scale/test_host_syncs.py's GPU case), `strongpose.train trainer=gpu` fast_dev_run with
#      data.encode_on=device, then with trainer.accumulate_grad_batches=2 (the accumulation windows' pinned
#      counts), experiments/loop_overhead.py (the training loop's host time on this host's CPU), and the codec
#      tests with their GPU = CPU cases (decode, batched encode).
# Done before and recorded in experiments/RESULTS.md (this script's git history has those steps): the 512-px
# grid with peak memory, the largest ResNet-152 bf16 batch (300 on an H200), the neck 128 / 256 check, bench_data
# on the H200's host, the steady-state bf16 ratios, packed vs default_collate batches.
# Every line goes to $OUT/gpu_session.log (the device tool brings $OUT back) or ./gpu_session.log, each step's
# whole output to gpu_session_raw.log beside it.
#
# The device image lacks hydra-core, omegaconf, albumentations, pycocotools & co: carry them as wheels in .whl/
# (git-ignored; see /work/.library/device/README.md), e.g. here:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
#     hydra-core omegaconf==2.3.1 albumentations==2.0.8 albucore==0.0.24 pycocotools \
#     faster-coco-eval pydantic pydantic-core annotated-types typing-inspection simsimd stringzilla
# and antlr4-python3-runtime==4.9.3, which PyPI has only as an sdist (pure Python): python3 -m pip wheel --no-deps -w .whl
# antlr4-python3-runtime==4.9.3 (versions as pyproject.toml admits and .venv holds; one version of each)
# then, in one device call with carry [".whl"] and timeout_s=600 (steps 1-4 stop at 70 + 100, 150, 130, 60 s, step 5 by
# 560 s):
#   bash experiments/gpu_session.sh
# QUICK=1 runs a tiny version of every step (CPU smoke test: bash experiments/gpu_session.sh with QUICK=1).
set -u
LOG="${OUT:-.}/gpu_session.log"
RAW="${OUT:-.}/gpu_session_raw.log"   # every step's whole output, for a step whose summary line is missing
: >"$RAW"
keep() { tee -a "$RAW"; }
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
  TINY=(--backbone resnet18 --input 128 --batch 2 --precision 32 --steps 1 --rounds 1)
  PLAIN=("${TINY[@]}" --workers 1)
  COCO=("${TINY[@]}" --workers 1 --override backbone.norm=frozen model.heads.num_convs=2 model.heads.width=256)
  COMP=("${TINY[@]}" --workers 1 --compile); COMP2=()   # one compilation: 1.5 min on the 2-core CPU
  FP32=("${TINY[@]}" --workers 1); R152B8=("${TINY[@]}" --workers 0)
  PARTS=("${TINY[@]}" --workers 1)
  TD=300 TZ=300 TC=300 TF=300 TP=300 TS=300  # a loaded CPU: time limits that only stop a hang
  HS=cpu
  TRAINER=default END=100000
else
  W=$(( $(nproc) > 2 ? $(nproc) - 2 : 1 ))
  BF=(--input 512 --precision bf16 --steps 20 --rounds 3 --workers "$W")
  PLAIN=(--backbone resnet50 --batch 8 16 "${BF[@]}")
  COCO=(--backbone resnet50 --batch 8 16 32 "${BF[@]}" --override backbone.norm=frozen model.heads.num_convs=2
        model.heads.width=256)   # conf/experiment/coco_resnet50.yaml's network
  COMP=(--backbone resnet50 --batch 8 16 "${BF[@]}" --compile)
  COMP2=(--backbone resnet50 --batch 16 "${BF[@]}" --compile reduce-overhead)
  FP32=(--backbone resnet50 resnet152 --batch 8 16 32 --input 512 --precision 32 --steps 20 --rounds 3 --workers "$W")
  R152B8=(--backbone resnet152 --batch 8 "${BF[@]}")
  PARTS=(--backbone resnet50 --batch 16 "${BF[@]}")
  TD=70 TZ=100 TC=150 TF=130 TP=60 TS=40  # seconds per step (TC shared by the two compiled runs, TF by fp32 and R152's)
  HS=cuda
  TRAINER=gpu END=560   # step 5 runs only in what is left before END seconds
fi
left() { local t=$(( $1 - (SECONDS - $2) )); echo $(( t > 10 ? t : 10 )); }  # a shared limit's rest
{
  date -u; nvidia-smi --query-gpu=name,memory.total --format=csv 2>/dev/null || echo "no nvidia-smi"
  $PY -c "import torch, lightning; print('torch', torch.__version__, 'lightning', lightning.__version__, 'cuda', torch.cuda.is_available())"
  echo "== bench_train, ResNet-50 bf16 (bench_train's default network)"
  timeout $TD $PY experiments/bench_train.py "${PLAIN[@]}" 2>&1 | keep | grep "^device="
  echo "== bench_train, the COCO experiment's ResNet-50 network (frozen BatchNorm, 2 x 256 head convolutions)"
  timeout $TZ $PY experiments/bench_train.py "${COCO[@]}" 2>&1 | keep | grep "^device="
  echo "== bench_train --compile (ResNet-50 bf16)"
  G0=$SECONDS
  timeout "$(left $TC $G0)" $PY experiments/bench_train.py "${COMP[@]}" 2>&1 | keep | grep "^device="
  if (( ${#COMP2[@]} )); then
    timeout "$(left $TC $G0)" $PY experiments/bench_train.py "${COMP2[@]}" 2>&1 | keep | grep "^device="
  fi
  echo "== bench_train, steady state: fp32, then ResNet-152 bf16 batch 8"
  G0=$SECONDS
  timeout "$(left $TF $G0)" $PY experiments/bench_train.py "${FP32[@]}" 2>&1 | keep | grep "^device="
  timeout "$(left $TF $G0)" $PY experiments/bench_train.py "${R152B8[@]}" 2>&1 | keep | grep "^device="
  echo "== step parts (workers $W)"
  timeout $TP $PY experiments/bench_step_parts.py "${PARTS[@]}" 2>&1 | keep | grep "^device="
  if (( END - SECONDS > 60 )); then
    echo "== host waits per training step (the CPU count, then torch.cuda.set_sync_debug_mode's)"
    timeout $TS $PY experiments/count_host_syncs.py --device $HS --epochs 2 2>&1 | keep | tr '\r' '\n' | sed -n '/without logging wait/,$p'
    timeout $TS $PY -m pytest tests/test_scale/test_host_syncs.py -q -p no:cacheprovider -k on_a_gpu 2>&1 | keep | tail -4
  fi
  for extra in "data.encode_on=device trainer.fast_dev_run=true" \
      "trainer.accumulate_grad_batches=2 trainer.fast_dev_run=2 data.batch_size=4 data.num_workers=2"; do
    if (( END - SECONDS > 45 )); then
      echo "== train trainer=$TRAINER $extra"
      # $extra unquoted on purpose: it holds several overrides
      timeout $(( END - SECONDS < 60 ? END - SECONDS : 60 )) $PY -m strongpose.train trainer=$TRAINER logger=none \
        $extra resume=null hydra.run.dir="$(mktemp -d)" 2>&1 | keep | tr '\r' '\n' | grep -E "val/AP=|^Done:|Error" | tail -3
    fi
  done
  if (( END - SECONDS > 40 )); then
    # the loop's Python on this machine's host CPU (the 2-core VM: loop_ms 5.8-6.1, log_ms 0.6), to carry the VM's
    # loop measurements over to this host
    echo "== the training loop's host time, on this host's CPU (loop_overhead.py)"
    timeout $(( END - SECONDS < 40 ? END - SECONDS : 40 )) $PY experiments/loop_overhead.py 2>&1 | keep | tail -1
  fi
  if (( END - SECONDS > 20 )); then
    echo "== codec tests (GPU = CPU cases)"
    timeout $(( END - SECONDS < 40 ? END - SECONDS : 40 )) $PY -m pytest tests/test_codec/test_decode.py tests/test_codec/test_encode.py -q -p no:cacheprovider 2>&1 | keep | tail -1
  fi
  date -u
} 2>&1 | tee "$LOG"
