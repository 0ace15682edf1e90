#!/usr/bin/env bash
# Install the orchestrator into a virtualenv with llama.cpp built portably.
#
#   bash scripts/install.sh [EXTRAS]        # EXTRAS default: local  (e.g. local,test,dev)
#
# llama-cpp-python compiles llama.cpp. pip's default build uses -march=native, which on CPUs that
# report AMX compiles AMX kernels that die with SIGILL on Q8_0/Q4_K_M models (seen on Intel Xeon
# with AVX-512 + AMX), and pip's wheel cache would hand that native wheel to any later install.
# So the wheel is built here, once, with an explicit x86-64-v3 baseline (SSE4.2, AVX, AVX2, FMA,
# F16C, BMI2: every x86-64 CPU since 2013; runtime-checked by the launcher), and cached under
# $ORCHESTRATOR_CACHE/wheels keyed by version and flags, never in pip's cache.
# Native speed, at your own risk: ORCHESTRATOR_LLAMA_NATIVE=1 (or set ORCHESTRATOR_LLAMA_CMAKE_ARGS).
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS="${1:-local}"
VENV="${ORCHESTRATOR_VENV:-.venv}"
CACHE="${ORCHESTRATOR_CACHE:-$HOME/.cache/orchestrator}"
# The one place that names the tested llama-cpp-python version (pyproject.toml pins the same).
LLAMA_CPP_PYTHON_VERSION="0.3.36"
if [ "$(uname -m)" = x86_64 ]; then
  PORTABLE="-DGGML_NATIVE=OFF -DGGML_SSE42=ON -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON"
else
  PORTABLE="-DGGML_NATIVE=OFF"  # elsewhere (aarch64 …): ggml's own generic baseline for the architecture
fi
if [ "${ORCHESTRATOR_LLAMA_NATIVE:-0}" = 1 ]; then PORTABLE="-DGGML_NATIVE=ON"; fi
# LLAVA (multimodal) is not used and doubles the build time.
FLAGS="${ORCHESTRATOR_LLAMA_CMAKE_ARGS:-$PORTABLE} -DLLAVA_BUILD=OFF"

[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip

KEY="$(printf '%s|%s|%s' "$LLAMA_CPP_PYTHON_VERSION" "$FLAGS" "$(uname -m)" | sha256sum | cut -c1-16)"
WHEELS="$CACHE/wheels/llama-cpp-python/$KEY"
if ! ls "$WHEELS"/llama_cpp_python-*.whl >/dev/null 2>&1; then
  echo "building llama-cpp-python $LLAMA_CPP_PYTHON_VERSION ($FLAGS); about 10 min on 2 cores" >&2
  mkdir -p "$WHEELS.tmp"
  CMAKE_ARGS="$FLAGS" "$VENV/bin/pip" wheel -q --no-cache-dir --no-deps -w "$WHEELS.tmp" \
    "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION"
  printf '%s\n' "$FLAGS" >"$WHEELS.tmp/CMAKE_ARGS"
  rm -rf "$WHEELS" && mv "$WHEELS.tmp" "$WHEELS"
fi
# The cached wheel first, so that resolving the extras below never builds another one.
"$VENV/bin/pip" install -q --force-reinstall --no-deps "$WHEELS"/llama_cpp_python-*.whl
# Every other package at the version the tests ran with (README: "moving a pin").
CONSTRAINTS=()
[ -f constraints.txt ] && CONSTRAINTS=(-c constraints.txt)
"$VENV/bin/pip" install -q "${CONSTRAINTS[@]}" -e ".[$EXTRAS]"
