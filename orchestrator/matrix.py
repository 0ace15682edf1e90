"""The Qwen2-Instruct checkpoint matrix as data: Hub ids, GPUs needed, valid tensor-parallel sizes.

Valid tensor-parallel (TP) sizes are derived from each model's architecture, with the rules the
serving engines enforce:

- the attention heads split evenly: ``heads % tp == 0``;
- the KV heads split or replicate evenly: ``kv_heads % tp == 0 or tp % kv_heads == 0``;
- GPTQ/AWQ weights are quantized in groups of 128 along the MLP's intermediate dimension, so each
  shard must hold whole groups: ``(intermediate / tp) % 128 == 0`` (the 72B GPTQ/AWQ releases pad
  their intermediate size to 29,696 for exactly this reason);
- and a checkpoint needs at least as many 80 GB GPUs as its weights and KV cache require.

So 0.5B allows TP 1-2 (14 heads), 1.5B GPTQ/AWQ TP 1-2 (8960/4 is not a multiple of 128), 7B 1/2/4,
and 72B BF16 2/4/8.

The GGUF checkpoints (Qwen's ``-GGUF`` repos, served by llama.cpp) split by layers across GPUs, so
no divisibility rule applies; how many GPUs one needs is computed from its weights (parameters x
bits per weight) and the KV cache of its slots (layers x KV heads x head size x 2 x fp16 x slots x
context per slot).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from orchestrator.errors import UserError

QUANTS = ("BF16", "GPTQ-Int8", "GPTQ-Int4", "AWQ")
# The files of Qwen's Qwen2-*-Instruct-GGUF repos, and the four the llama.cpp matrix takes by default.
GGUF_QUANTS = ("FP16", "Q8_0", "Q6_K", "Q5_K_M", "Q5_0", "Q4_K_M", "Q4_0", "Q3_K_M", "Q2_K")
GGUF_DEFAULT = ("FP16", "Q8_0", "Q5_K_M", "Q4_K_M")
# Average bits per weight of llama.cpp's quantization types on these models (file size x 8 / params,
# with the mixed tensors the K-quants keep at higher precision).
BITS_PER_WEIGHT = {"FP16": 16.0, "Q8_0": 8.5, "Q6_K": 6.6, "Q5_K_M": 5.7, "Q5_0": 5.5, "Q4_K_M": 4.9,
                   "Q4_0": 4.5, "Q3_K_M": 3.9, "Q2_K": 3.4}  # fmt: skip
GPU_GB = 80.0
GPU_USABLE = 0.9  # what a server can take of a GPU (CUDA context, compute buffers)
SIZES = ("0.5B", "1.5B", "7B", "72B")
TP_CANDIDATES = (1, 2, 4, 8)
GROUP_SIZE = 128


class MatrixError(UserError, ValueError):
    """A checkpoint/parallelism combination that cannot work; the message says why."""


@dataclass(frozen=True)
class Architecture:
    """What the parallelism rules need to know about a model size."""

    heads: int
    kv_heads: int
    intermediate: int
    quantized_intermediate: int  # as shipped in the GPTQ/AWQ repos (72B pads it)
    layers: int
    head_dim: int
    params_b: float  # billions of parameters

    def kv_bytes_per_token(self) -> int:
        """fp16 K and V of every layer for one token of context."""
        return self.layers * self.kv_heads * self.head_dim * 2 * 2


ARCH = {
    "0.5B": Architecture(14, 2, 4864, 4864, layers=24, head_dim=64, params_b=0.49),
    "1.5B": Architecture(12, 2, 8960, 8960, layers=28, head_dim=128, params_b=1.54),
    "7B": Architecture(28, 4, 18944, 18944, layers=28, head_dim=128, params_b=7.62),
    "72B": Architecture(64, 8, 29568, 29696, layers=80, head_dim=128, params_b=72.71),
}

# 80 GB GPUs: (minimum, what to use in practice). 72B BF16 is 145 GB of weights.
GPUS = {
    ("72B", "BF16"): (2, 4),
    ("72B", "GPTQ-Int8"): (2, 2),
    ("72B", "GPTQ-Int4"): (1, 1),
    ("72B", "AWQ"): (1, 1),
}


@dataclass(frozen=True)
class Checkpoint:
    """One quantized Qwen2-Instruct checkpoint."""

    size: str
    quant: str

    @property
    def model(self) -> str:
        """Display name, the group of rows in the report."""
        return f"Qwen2-{self.size}-Instruct"

    @property
    def is_gguf(self) -> bool:
        """A llama.cpp file of Qwen's -GGUF repo (not a safetensors checkpoint)."""
        return self.quant in GGUF_QUANTS

    @property
    def base_repo(self) -> str:
        """The BF16 model's Hub id: its tokenizer and chat template."""
        return f"Qwen/{self.model}"

    @property
    def repo(self) -> str:
        """Hub id (a GGUF's: the repo holding every quantization's file)."""
        if self.is_gguf:
            return f"{self.base_repo}-GGUF"
        suffix = "" if self.quant == "BF16" else f"-{self.quant}"
        return f"{self.base_repo}{suffix}"

    @property
    def gguf_file(self) -> str:
        """The GGUF's file name in its repo: ``qwen2-0_5b-instruct-q4_k_m.gguf`` (the 72B's larger
        files are split on the Hub; llama.cpp fetches every part)."""
        return f"qwen2-{self.size.lower().replace('.', '_')}-instruct-{self.quant.lower()}.gguf"

    @property
    def slug(self) -> str:
        """Service and file name: ``qwen2-7b-gptq-int4``, ``qwen2-7b-q4_k_m``."""
        return f"qwen2-{self.size.lower()}-{self.quant.lower()}"

    def memory_gb(self, slots: int, n_ctx: int) -> float:
        """A GGUF's weights plus the fp16 KV cache of ``slots`` x ``n_ctx`` tokens, in GB."""
        arch = ARCH[self.size]
        weights = arch.params_b * 1e9 * BITS_PER_WEIGHT[self.quant] / 8
        return (weights + arch.kv_bytes_per_token() * slots * n_ctx) / 1e9

    def gguf_gpus(self, slots: int, n_ctx: int) -> int:
        """80 GB GPUs a GGUF needs with its KV cache (llama.cpp splits layers across them)."""
        return max(1, math.ceil(self.memory_gb(slots, n_ctx) / (GPU_GB * GPU_USABLE)))

    @property
    def profile_size(self) -> str:
        """Compose profile of the size: ``7b``."""
        return self.size.lower()

    @property
    def profile_quant(self) -> str:
        """Compose profile of the quantization: ``gptq-int4``."""
        return self.quant.lower()

    @property
    def min_gpus(self) -> int:
        """Fewest 80 GB GPUs it fits on."""
        return GPUS.get((self.size, self.quant), (1, 1))[0]

    @property
    def default_tp(self) -> int:
        """GPUs to use in practice."""
        return GPUS.get((self.size, self.quant), (1, 1))[1]

    def tp_problem(self, tp: int) -> str | None:
        """Why ``tp`` cannot serve this checkpoint, or None when it can."""
        arch = ARCH[self.size]
        if tp not in TP_CANDIDATES:
            return f"tensor-parallel size must be one of {TP_CANDIDATES}, got {tp}"
        if tp < self.min_gpus:
            return f"{self.repo} needs at least {self.min_gpus} GPUs (80 GB), tensor-parallel {tp} is too few"
        if arch.heads % tp:
            return f"{arch.heads} attention heads do not split over tensor-parallel {tp}"
        if arch.kv_heads % tp and tp % arch.kv_heads:
            return f"{arch.kv_heads} KV heads neither split nor replicate evenly over tensor-parallel {tp}"
        if self.quant != "BF16":
            inter = arch.quantized_intermediate
            if (inter // tp) % GROUP_SIZE or inter % tp:
                return (
                    f"intermediate size {inter}/{tp} = {inter / tp:g} is not a multiple of the "
                    f"quantization group size {GROUP_SIZE}"
                )
        return None

    def valid_tp(self) -> tuple[int, ...]:
        """Every tensor-parallel size that works."""
        return tuple(tp for tp in TP_CANDIDATES if self.tp_problem(tp) is None)

    def check_tp(self, tp: int) -> None:
        """Raise MatrixError naming the reason when ``tp`` is invalid."""
        problem = self.tp_problem(tp)
        if problem is not None:
            raise MatrixError(f"{self.repo} at tensor-parallel {tp}: {problem}")


MATRIX = tuple(Checkpoint(size, quant) for size in SIZES for quant in QUANTS)


def normalise_size(value: str) -> str:
    """``7b`` / ``7B`` / ``qwen2-7b`` -> ``7B``."""
    v = value.strip().upper().removeprefix("QWEN2-")
    if v not in SIZES:
        raise MatrixError(f"unknown size {value!r} (expected one of {', '.join(SIZES)})")
    return v


def normalise_quant(value: str, gguf: bool = False) -> str:
    """``gptq-int4`` / ``GPTQ-Int4`` / ``int4`` -> ``GPTQ-Int4``; with ``gguf``: ``q4_k_m`` -> ``Q4_K_M``
    (``f16``/``fp16`` -> ``FP16``)."""
    v = value.strip().lower()
    names = GGUF_QUANTS if gguf else QUANTS
    for q in names:
        if v in (q.lower(), q.lower().removeprefix("gptq-"), q.lower().replace("fp", "f", 1)):
            return q
    raise MatrixError(f"unknown quantization {value!r} (expected one of {', '.join(names)})")


def select(sizes: list[str] | None = None, quants: list[str] | None = None, gguf: bool = False) -> list[Checkpoint]:
    """Checkpoints of the given sizes and quantizations in matrix order: the safetensors matrix
    (all by default), or with ``gguf`` the GGUF one (``GGUF_DEFAULT`` by default)."""
    want_sizes = {normalise_size(s) for s in sizes} if sizes else set(SIZES)
    if gguf:
        want = {normalise_quant(q, gguf=True) for q in quants} if quants else set(GGUF_DEFAULT)
        return [Checkpoint(s, q) for s in SIZES for q in GGUF_QUANTS if s in want_sizes and q in want]
    want_quants = {normalise_quant(q) for q in quants} if quants else set(QUANTS)
    return [c for c in MATRIX if c.size in want_sizes and c.quant in want_quants]


def by_repo(repo: str) -> Checkpoint | None:
    """The checkpoint of a Hub id, if it is in the matrix (case-insensitive)."""
    return next((c for c in MATRIX if c.repo.lower() == repo.lower()), None)


def gguf_checkpoint(model_id: str, quant: str) -> Checkpoint | None:
    """The GGUF checkpoint of a base model's Hub id and a quantization name, if in the matrix."""
    base = by_repo(model_id)
    if base is None or base.quant != "BF16":
        return None
    try:
        return Checkpoint(base.size, normalise_quant(quant, gguf=True))
    except MatrixError:
        return None
