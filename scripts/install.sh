#!/usr/bin/env bash
# Install the orchestrator into a virtualenv with llama.cpp built portably.
#
#   bash scripts/install.sh [EXTRAS]        # EXTRAS default: local  (e.g. local,test,dev)
#
# llama-cpp-python compiles llama.cpp, and so does llama.cpp's own server (llama-server, built by
# scripts/build_llama_server.sh from the same source): both portably (scripts/llama_build.sh says
# why). The wheel is built here, once, and cached under $ORCHESTRATOR_CACHE/wheels keyed by version
# and flags, never in pip's cache (which ignores flags and would hand a native wheel to any later
# install). llama-server is copied into the venv's bin/, where managed targets find it.
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS="${1:-local}"
VENV="${ORCHESTRATOR_VENV:-.venv}"
source scripts/llama_build.sh
CACHE="$LLAMA_CACHE"
# LLAVA (multimodal) is not used and doubles the build time.
FLAGS="$LLAMA_FLAGS -DLLAVA_BUILD=OFF"

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
LLAMA_SERVER="$(bash scripts/build_llama_server.sh | tail -n 1)"
cp "$LLAMA_SERVER" "$LLAMA_SERVER.CMAKE_ARGS" "$(dirname "$LLAMA_SERVER")/llama-quantize" "$VENV/bin/"
