#!/usr/bin/env bash
# Build llama.cpp's own C++ server (llama-server, with llama-quantize) once, portably, from the
# llama.cpp source that llama-cpp-python's sdist vendors (the same llama.cpp as the Python
# server's), and cache it under $ORCHESTRATOR_CACHE/llama-server/<key>. Prints the binary's path
# on its last line. About 9 min on 2 cores; offline but for PyPI (the sdist, cmake and ninja).
#
#   bash scripts/build_llama_server.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/llama_build.sh
# The web UI is fetched at build time unless it is off (fails offline), and so is OpenSSL's use;
# no tests, examples or shared libraries: a self-contained binary needing only libstdc++/libgomp.
FLAGS="$LLAMA_FLAGS -DCMAKE_BUILD_TYPE=Release -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF \
-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DBUILD_SHARED_LIBS=OFF"
KEY="$(printf '%s|%s|%s' "$LLAMA_CPP_PYTHON_VERSION" "$FLAGS" "$(uname -m)" | sha256sum | cut -c1-16)"
OUT="$LLAMA_CACHE/llama-server/$KEY"
if [ ! -x "$OUT/llama-server" ]; then
  echo "building llama-server from llama-cpp-python $LLAMA_CPP_PYTHON_VERSION's llama.cpp ($LLAMA_FLAGS); about 9 min on 2 cores" >&2
  WORK="$(mktemp -d "${TMPDIR:-/tmp}/llama-server-build.XXXXXX")"
  trap 'rm -rf "$WORK"' EXIT
  # Build tools from PyPI, in a throwaway venv: a fresh machine may have no cmake or ninja.
  python3 -m venv "$WORK/tools"
  "$WORK/tools/bin/pip" install -q "cmake==3.31.10" "ninja==1.13.0"
  "$WORK/tools/bin/pip" download -q --no-binary :all: --no-deps -d "$WORK" "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION"
  tar -xzf "$WORK"/llama_cpp_python-*.tar.gz -C "$WORK"
  SRC="$(echo "$WORK"/llama_cpp_python-*/vendor/llama.cpp)"
  # shellcheck disable=SC2086  # FLAGS is a list of -D options
  PATH="$WORK/tools/bin:$PATH" cmake -S "$SRC" -B "$WORK/build" -G Ninja $FLAGS >"$WORK/configure.log" 2>&1 \
    || { tail -n 20 "$WORK/configure.log" >&2; exit 1; }
  PATH="$WORK/tools/bin:$PATH" cmake --build "$WORK/build" --target llama-server llama-quantize -j "$(nproc)" \
    >"$WORK/build.log" 2>&1 || { tail -n 20 "$WORK/build.log" >&2; exit 1; }
  mkdir -p "$OUT.tmp"
  cp "$WORK/build/bin/llama-server" "$WORK/build/bin/llama-quantize" "$OUT.tmp/"
  # The flags beside the binary: the launcher checks them against the CPU it runs on.
  printf '%s\n' "$FLAGS" >"$OUT.tmp/llama-server.CMAKE_ARGS"
  rm -rf "$OUT" && mv "$OUT.tmp" "$OUT"
fi
echo "$OUT/llama-server"
