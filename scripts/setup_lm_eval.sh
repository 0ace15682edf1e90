#!/usr/bin/env bash
# lm-evaluation-harness in its own virtualenv, for the peer-oracle test (tests/test_smollm2_real.py):
# its own dependencies (evaluate, sacrebleu, scikit-learn, ...) stay out of the project's venv.
# Reused when present and at the pinned version. Prints the venv's python on the last line.
set -euo pipefail
CACHE="${ORCHESTRATOR_CACHE:-$HOME/.cache/orchestrator}"
VENV="${ORCHESTRATOR_LM_EVAL_VENV:-$CACHE/venvs/lm-eval}"
HERE="$(cd "$(dirname "$0")/.." && pwd)"
# Tested version (see "Moving a pin" in README.md); IFEval's checks need langdetect, immutabledict, nltk.
LM_EVAL_VERSION="0.4.13"
if ! "$VENV/bin/python" -c "
import importlib.metadata as m, sys, lm_eval.evaluator, lm_eval.models.openai_completions, langdetect, immutabledict
sys.exit(m.version('lm-eval') != '$LM_EVAL_VERSION')" >/dev/null 2>&1; then
  echo "installing lm-eval $LM_EVAL_VERSION into $VENV" >&2
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip >&2
  CONSTRAINTS=()
  [ -f "$HERE/constraints-lm-eval.txt" ] && CONSTRAINTS=(-c "$HERE/constraints-lm-eval.txt")
  "$VENV/bin/pip" install -q "${CONSTRAINTS[@]}" "lm-eval[api]==$LM_EVAL_VERSION" langdetect immutabledict nltk >&2
fi
echo "$VENV/bin/python"
