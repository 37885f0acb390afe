#!/usr/bin/env bash
# fdistill's GPU checks as one prepared script, on a CUDA machine from a clean clone (no network needed when
# WHEELS=<dir> holds the wheels scripts/gpu_env.sh installs; the machine's own torch is reused, never replaced):
#
#   1. the fused lm-head path on CUDA against the materialised logits and Liger-Kernel's LigerFusedLinearJSDLoss at
#      4,096 tokens x 128,256 x 2,048 (Llama-3's vocabulary, bf16 inputs; time and peak memory), and the chunked
#      divergences on 4,096 x 128,256 logits       -> $OUT/gpu_divergences.md
#   2. with two or more GPUs: the tiny Llama pair on 1 and on 2 processes (torchrun; FSDP student, sharded
#      teacher), compared                           -> $OUT/gpu_fsdp.md
#   3. scripts/device_real_dart.sh: SmolLM2 -> 6 layers on DART with GPU budgets -> results/real/gpu
#
#   bash scripts/gpu_check.sh            # OUT defaults to results/bench; SKIP_REAL=1 skips step 3
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/gpu_env.sh
OUT_DIR=${OUT:-results/bench}
mkdir -p "$OUT_DIR"
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu_check: no CUDA device here; the CPU tests (make test) are the proof on this machine" >&2
  exit 2
fi
LIGER=(--no-deps "liger-kernel==0.8.5")
if [ -n "${WHEELS:-}" ]; then LIGER+=(--no-index --find-links "$WHEELS"); fi
"$PY" -m pip install -q "${LIGER[@]}" || echo "gpu_check: liger-kernel not installable; its rows say why"

echo "gpu_check 1/3: kernels on $("$PY" -c 'import torch; print(torch.cuda.get_device_name(0))')"
"$PY" scripts/bench_divergences.py --device cuda --dtype bfloat16 --sizes 4096x128256 --cases kl,rkl,js,tvd,akl \
  --fused-sizes 4096x128256x2048 --rounds 2 --repeats 3 --out "$OUT_DIR/gpu_divergences.md"

GPUS=$("$PY" -c "import torch; print(torch.cuda.device_count())")
if [ "$GPUS" -ge 2 ]; then
  echo "gpu_check 2/3: 1 vs 2 processes (FSDP, sharded teacher) on $GPUS GPUs"
  WORK=$(mktemp -d)
  TINY=(pair=tiny_llama dataset.params.num_train=512 dataset.params.num_test=64 pipeline.mixed_precision=bf16
        pipeline.distill.max_steps=40 pipeline.distill.batch_size=32 divergence=tvd "paths.cache_dir=$WORK/cache")
  START=$(date +%s)
  CUDA_VISIBLE_DEVICES=0 "$PY" run.py "${TINY[@]}" "paths.output_dir=$WORK/one"
  ONE=$(( $(date +%s) - START )); START=$(date +%s)
  "$(dirname "$PY")/torchrun" --standalone --nproc_per_node 2 run.py "${TINY[@]}" "paths.output_dir=$WORK/two" \
    pipeline.distributed.strategy=fsdp pipeline.distributed.shard_teacher=true pipeline.distributed.head_unit=own
  TWO=$(( $(date +%s) - START ))
  "$PY" - "$WORK" "$OUT_DIR/gpu_fsdp.md" "$ONE" "$TWO" <<'PYTHON'
import json, sys
from pathlib import Path
import torch
from safetensors.torch import load_file
work, out, one_s, two_s = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4]
one, two = (next(path for path in (work / run).glob("runs/*/*") if path.name != "latest") for run in ("one", "two"))
a, b = load_file(one / "student" / "model.safetensors"), load_file(two / "student" / "model.safetensors")
diff = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
same = (one / "predictions.jsonl").read_text() == (two / "predictions.jsonl").read_text()
ma, mb = (json.loads((run / "metrics.json").read_text())["metrics"] for run in (one, two))
lines = [f"# 1 vs 2 processes on {torch.cuda.get_device_name(0)} (scripts/gpu_check.sh)", "",
         f"tiny_llama, TVD, bf16 autocast; 2 processes: FSDP2 student, sharded teacher. Wall: {one_s} s vs {two_s} s "
         "(every stage, cold cache for the 1-process run, artifacts reused by the 2-process one).", "",
         f"- max |w1 - w2| over the student's weights: {diff:.3g}", f"- predictions identical: {same}",
         *(f"- {k}: {ma[k]:.4f} vs {mb[k]:.4f}" for k in ("bleu", "risk/coverage_risk_per_token") if k in ma)]
out.write_text("\n".join(lines) + "\n")
print("\n".join(lines))
PYTHON
else
  echo "gpu_check 2/3: one GPU: the 2-process check runs on CPU processes in the test suite (tests/test_parallel.py)"
fi

if [ -z "${SKIP_REAL:-}" ]; then
  echo "gpu_check 3/3: scripts/device_real_dart.sh"
  bash scripts/device_real_dart.sh
fi
