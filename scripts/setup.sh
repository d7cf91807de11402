#!/usr/bin/env bash
# Create (or update) .venv/ in the repo root and install conal-rl with its dev extras.
# torch: the CUDA build where an NVIDIA driver answers, otherwise the CPU build
# (set TORCH_INDEX_URL to a CPU-only wheel index to avoid downloading CUDA libraries).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
pip() { .venv/bin/python -m pip --disable-pip-version-check -q "$@"; }
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
        echo "setup: NVIDIA GPU found, installing the CUDA build of $TORCH_SPEC"
        pip install "$TORCH_SPEC"
    else
        echo "setup: no GPU, installing the CPU build of $TORCH_SPEC"
        pip install ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "$TORCH_SPEC"
    fi
fi
pip install -e ".[dev]"
echo "setup: .venv ready ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__, "cuda" if torch.cuda.is_available() else "cpu")'))"
