# Sourced by install.sh and build_llama_server.sh: the one place that names the tested llama.cpp
# (as llama-cpp-python's version, whose sdist vendors the llama.cpp source both builds use) and
# the portable instruction-set baseline every build of it gets.
#
# pip's default build uses -march=native, which on CPUs that report AMX compiles AMX kernels that
# die with SIGILL on Q8_0/Q4_K_M models (seen on Intel Xeon with AVX-512 + AMX). So every build
# here gets an explicit x86-64-v3 baseline (SSE4.2, AVX, AVX2, FMA, F16C, BMI2: every x86-64 CPU
# since 2013), runtime-checked by the launcher against the CPU it runs on.
# Native speed, at your own risk: ORCHESTRATOR_LLAMA_NATIVE=1 (or set ORCHESTRATOR_LLAMA_CMAKE_ARGS).
LLAMA_CPP_PYTHON_VERSION="0.3.36"  # pyproject.toml pins the same
if [ "$(uname -m)" = x86_64 ]; then
  LLAMA_PORTABLE="-DGGML_NATIVE=OFF -DGGML_SSE42=ON -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON"
else
  LLAMA_PORTABLE="-DGGML_NATIVE=OFF"  # elsewhere (aarch64 …): ggml's own generic baseline for the architecture
fi
if [ "${ORCHESTRATOR_LLAMA_NATIVE:-0}" = 1 ]; then LLAMA_PORTABLE="-DGGML_NATIVE=ON"; fi
LLAMA_FLAGS="${ORCHESTRATOR_LLAMA_CMAKE_ARGS:-$LLAMA_PORTABLE}"
LLAMA_CACHE="${ORCHESTRATOR_CACHE:-$HOME/.cache/orchestrator}"
