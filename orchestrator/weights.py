"""How big a checkpoint's weights are: bytes of its tensors, parameters, bits per weight.

- A GGUF file (a managed target's): its tensor table, read with llama.cpp's own ``gguf`` library.
  A "Q4_K_M" of a small model can be mostly q5_0/q8_0 fallbacks; its bits per weight say so.
- A folder of safetensors: each file's header (tensor dtypes and shapes).
- A Hub repo: the Hub's safetensors metadata (the same headers, fetched by range), cached under
  ``$ORCHESTRATOR_CACHE/weights`` per repo and revision; offline, the files in the local Hugging
  Face cache; else the checkpoint matrix's estimate where the repo is in it (matrix.py), else
  n/a with the reason.

Packed quantized tensors (GPTQ/AWQ int32 words) do not count parameters: such a checkpoint has
``params`` None, and the report divides its bytes by its reference's parameters.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from orchestrator.footprint import WeightsSize

# safetensors dtypes: bytes per element; the integer ones hold packed quantized weights.
DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1,
               "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "U16": 2, "U32": 4, "U64": 8, "BOOL": 1}  # fmt: skip
PACKED = {"I64", "I32", "I16", "I8", "U8", "U16", "U32", "U64"}
# Nominal bits per weight of the safetensors quantizations (group-128 scales and zeros included);
# the GGUF ones are matrix.BITS_PER_WEIGHT.
NOMINAL_BITS = {"BF16": 16.0, "GPTQ-Int8": 8.25, "GPTQ-Int4": 4.25, "AWQ": 4.25}


def cache_root() -> Path:
    """``$ORCHESTRATOR_CACHE/weights``."""
    root = os.environ.get("ORCHESTRATOR_CACHE") or str(Path.home() / ".cache" / "orchestrator")
    return Path(root) / "weights"


def _size(nbytes: int, params: int | None, source: str) -> WeightsSize:
    bpw = round(nbytes * 8 / params, 3) if params else None
    return WeightsSize(bytes=nbytes, params=params, bits_per_weight=bpw, source=source)


def gguf_size(path: Path) -> WeightsSize:
    """A GGUF file's tensors (every shard of a split file: ``-00001-of-0000N``)."""
    from gguf import GGUFReader

    nbytes = params = 0
    for part in _shards(path):
        for tensor in GGUFReader(part).tensors:
            nbytes += int(tensor.n_bytes)
            params += int(tensor.n_elements)
    return _size(nbytes, params, "GGUF tensors")


def _shards(path: Path) -> list[Path]:
    stem = path.name
    if "-00001-of-" not in stem:
        return [path]
    count = stem.split("-of-")[1].split(".")[0]
    return [path.with_name(stem.replace("-00001-of-", f"-{i:05d}-of-")) for i in range(1, int(count) + 1)]


def _from_tensors(tensors: Iterable[tuple[str, list[int]]], source: str) -> WeightsSize:
    nbytes = params = 0
    packed = False
    for dtype, shape in tensors:
        n = 1
        for d in shape:
            n *= int(d)
        nbytes += n * DTYPE_BYTES.get(dtype, 0)
        params += n
        packed = packed or dtype in PACKED
    return _size(nbytes, None if packed else params, source)


def safetensors_header(path: Path) -> dict[str, Any]:
    """A safetensors file's header: 8 bytes of little-endian length, then that much JSON."""
    with path.open("rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header: dict[str, Any] = json.loads(f.read(length))
    return header


def folder_size(folder: Path, source: str = "local safetensors") -> WeightsSize:
    """The safetensors files of a folder (a local checkpoint or a Hub snapshot)."""
    files = sorted(folder.rglob("*.safetensors"))
    if not files:
        return WeightsSize(why=f"no safetensors files in {folder}")
    return _from_tensors(
        ((t["dtype"], t["shape"]) for f in files for k, t in safetensors_header(f).items() if k != "__metadata__"),
        source,
    )


def hub_size(repo: str, revision: str | None = None) -> WeightsSize:
    """A Hub repo's safetensors: cached metadata, else the Hub, else the local HF cache, else the matrix."""
    cache = cache_root() / f"{repo.replace('/', '--')}@{revision or 'main'}.json"
    if cache.is_file():
        return WeightsSize.from_json(json.loads(cache.read_text()))
    why = ""
    try:
        size = _hub_metadata(repo, revision)
    except Exception as exc:  # offline, gated, no safetensors: the fallbacks say which
        why = f"the Hub's metadata: {type(exc).__name__}"
        size = None
    if size is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(size.to_json()))
        return size
    local = _local_snapshot(repo, revision)
    if local is not None:
        found = folder_size(local, "local Hugging Face cache")
        if found.bytes:
            return found
    estimate = matrix_estimate(repo)
    if estimate is not None:
        return estimate
    return WeightsSize(why=f"{repo}: not sized ({why or 'no metadata'}; not in the local cache nor the matrix)")


def _hub_metadata(repo: str, revision: str | None) -> WeightsSize:
    from huggingface_hub import HfApi

    from orchestrator.hub import _quiet

    with _quiet():
        meta = HfApi().get_safetensors_metadata(repo, revision=revision)
    return _from_tensors(
        ((t.dtype, list(t.shape)) for f in meta.files_metadata.values() for t in f.tensors.values()),
        "Hub safetensors metadata",
    )


def _local_snapshot(repo: str, revision: str | None) -> Path | None:
    from huggingface_hub import snapshot_download

    from orchestrator.hub import _quiet

    try:
        with _quiet():
            return Path(snapshot_download(repo, revision=revision, local_files_only=True))
    except Exception:  # not cached: the next fallback
        return None


def matrix_estimate(repo: str, quantization: str | None = None) -> WeightsSize | None:
    """Parameters x nominal bits of a checkpoint in the matrix (a GGUF repo's: ``quantization``'s file)."""
    from orchestrator.matrix import ARCH, BITS_PER_WEIGHT, by_repo, gguf_checkpoint

    base = repo[: -len("-GGUF")] if repo.upper().endswith("-GGUF") else None
    ckpt = gguf_checkpoint(base, quantization or "") if base and quantization else by_repo(repo)
    if ckpt is None:
        return None
    bits = BITS_PER_WEIGHT.get(ckpt.quant) or NOMINAL_BITS.get(ckpt.quant)
    if bits is None:
        return None
    params = int(ARCH[ckpt.size].params_b * 1e9)
    source = "matrix estimate (params x nominal bits)"
    return WeightsSize(bytes=int(params * bits / 8), params=params, bits_per_weight=bits, source=source)


def size_of(model_file: Path | None, model_id: str | None, quantization: str | None = None) -> WeightsSize:
    """A target's weights: its model file or folder, else its Hub id (or a local path in model_id)."""
    try:
        if model_file is not None:
            return gguf_size(model_file) if model_file.is_file() else folder_size(model_file)
        if model_id is None:
            return WeightsSize(why="no model file and no model_id")
        local = Path(os.path.expanduser(model_id))
        if local.is_dir():
            return folder_size(local)
        if local.suffix == ".gguf" and local.is_file():
            return gguf_size(local)
        from orchestrator.matrix import gguf_checkpoint

        if quantization and gguf_checkpoint(model_id, quantization) is not None:
            # A llama.cpp target of the matrix names its base model (tokenizer, template): its
            # weights are that model's GGUF of this quantization, which the matrix knows.
            base = model_id + "-GGUF"
            return matrix_estimate(base, quantization) or WeightsSize(why=f"{base}: not in the matrix")
        if model_id.upper().endswith("-GGUF"):
            found = matrix_estimate(model_id, quantization)
            return found or WeightsSize(why=f"{model_id}: a GGUF repo not in the matrix")
        return hub_size(model_id)
    except Exception as exc:  # unreadable or malformed (the readers raise what numpy/struct do): n/a, said why
        return WeightsSize(why=f"not sized ({type(exc).__name__}: {exc})"[:300])
