"""Batch-1 decode roofline: how close a checkpoint's decoding gets to memory bandwidth.

Decoding one token at batch 1 reads every weight once, so tokens/s cannot exceed
``memory bandwidth / weight bytes`` (times the GPUs a tensor-parallel server reads with). The
achieved figure is 1000 / TPOT p50 of the load test's lowest level (concurrency 1 ideally). This is
an estimate: it ignores KV-cache and activation traffic (small at short context, batch 1) and
assumes the datasheet bandwidth, which real kernels reach 70-90 % of.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from orchestrator.errors import UserError

# Datasheet peak memory bandwidth, GB/s.
GPU_BANDWIDTH_GBS = {
    "h200": 4800.0,
    "h100": 3350.0,  # SXM5, HBM3
    "h100-pcie": 2000.0,
    "a100": 2039.0,  # 80 GB SXM4
    "a100-40gb": 1555.0,
    "l40s": 864.0,
    "a10": 600.0,
    "l4": 300.0,
    "rtx4090": 1008.0,
}


class RooflineError(UserError, ValueError):
    """Unknown GPU or weights that cannot be sized."""


def bandwidth(gpu: str | None, bandwidth_gbs: float | None) -> float:
    """GB/s from --bandwidth-gbs or the --gpu table."""
    if bandwidth_gbs is not None:
        return bandwidth_gbs
    if gpu is None or gpu.lower() not in GPU_BANDWIDTH_GBS:
        raise RooflineError(f"unknown GPU {gpu!r} (known: {', '.join(GPU_BANDWIDTH_GBS)}; or --bandwidth-gbs)")
    return GPU_BANDWIDTH_GBS[gpu.lower()]


def weight_bytes(source: str) -> int:
    """Bytes of a checkpoint's weight tensors (weights.size_of: a GGUF's tensor table, a folder's
    safetensors headers, a Hub repo's safetensors metadata); RooflineError when it cannot be sized."""
    from orchestrator.weights import size_of

    path = Path(source)
    size = size_of(path, None) if path.exists() else size_of(None, source)
    if not size.bytes:
        raise RooflineError(f"weights of {source} not sized: {size.why}")
    return size.bytes


def roofline(weights: int, bandwidth_gbs: float, tp: int, tpot_ms: float | None) -> dict[str, Any]:
    """Bound and achieved batch-1 decode tokens/s."""
    bound = bandwidth_gbs * 1e9 * tp / weights if weights else None
    achieved = 1000.0 / tpot_ms if tpot_ms else None
    return {
        "weight_bytes": weights,
        "bandwidth_gbs": bandwidth_gbs,
        "gpus": tp,
        "bound_tok_s": bound,
        "achieved_tok_s": achieved,
        "fraction": achieved / bound if bound and achieved else None,
    }
