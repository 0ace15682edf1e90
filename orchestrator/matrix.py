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
"""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.errors import UserError

QUANTS = ("BF16", "GPTQ-Int8", "GPTQ-Int4", "AWQ")
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


ARCH = {
    "0.5B": Architecture(heads=14, kv_heads=2, intermediate=4864, quantized_intermediate=4864),
    "1.5B": Architecture(heads=12, kv_heads=2, intermediate=8960, quantized_intermediate=8960),
    "7B": Architecture(heads=28, kv_heads=4, intermediate=18944, quantized_intermediate=18944),
    "72B": Architecture(heads=64, kv_heads=8, intermediate=29568, quantized_intermediate=29696),
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
    def repo(self) -> str:
        """Hub id."""
        suffix = "" if self.quant == "BF16" else f"-{self.quant}"
        return f"Qwen/{self.model}{suffix}"

    @property
    def slug(self) -> str:
        """Service and file name: ``qwen2-7b-gptq-int4``."""
        return f"qwen2-{self.size.lower()}-{self.quant.lower()}"

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


def normalise_quant(value: str) -> str:
    """``gptq-int4`` / ``GPTQ-Int4`` / ``int4`` -> ``GPTQ-Int4``."""
    v = value.strip().lower()
    for q in QUANTS:
        if v in (q.lower(), q.lower().removeprefix("gptq-")):
            return q
    raise MatrixError(f"unknown quantization {value!r} (expected one of {', '.join(QUANTS)})")


def select(sizes: list[str] | None = None, quants: list[str] | None = None) -> list[Checkpoint]:
    """Checkpoints of the given sizes and quantizations (all by default), in matrix order."""
    want_sizes = {normalise_size(s) for s in sizes} if sizes else set(SIZES)
    want_quants = {normalise_quant(q) for q in quants} if quants else set(QUANTS)
    return [c for c in MATRIX if c.size in want_sizes and c.quant in want_quants]


def by_repo(repo: str) -> Checkpoint | None:
    """The checkpoint of a Hub id, if it is in the matrix (case-insensitive)."""
    return next((c for c in MATRIX if c.repo.lower() == repo.lower()), None)
