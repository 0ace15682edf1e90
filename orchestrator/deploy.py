"""What each serving backend needs to be deployed (Compose, Kubernetes): its pinned image, port,
cache mount, environment and server command, one ``DeploySpec`` entry per backend."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from orchestrator.llamacpp import llama_server_options
from orchestrator.matrix import Checkpoint
from orchestrator.registry import COMPOSE_BACKENDS

if TYPE_CHECKING:
    from orchestrator.compose import ComposeOptions

# The host's HF_HOME is mounted whole; TGI is pointed at its hub/ folder so that every backend
# shares one download of each checkpoint (llama.cpp keeps its GGUF downloads in a folder of it).
HF_HOME_MOUNT = "/root/.cache/huggingface"
MODEL_DIR_MOUNT = "/models"  # --model-dir: local GGUF files, mounted read-only
# TGI token budget: prompts up to 7,168 tokens (5-shot MMLU) plus 1,024 generated.
TGI_MAX_INPUT, TGI_MAX_TOTAL, TGI_MAX_PREFILL = 7168, 8192, 8192
MAX_MODEL_LEN = 8192
# llama-server: slots decoded together, each with MAX_MODEL_LEN of context. Eight keep the 72B
# GGUFs' fp16 KV cache (21 GB at 8 x 8,192 tokens) within 8 GPUs for the four default quantizations.
LLAMACPP_SLOTS = 8


def _llamacpp(ckpt: Checkpoint, tp: int, port: int, listen: list[str], opts: ComposeOptions) -> list[str]:
    if opts.model_dir:
        model = ["--model", f"{MODEL_DIR_MOUNT}/{ckpt.gguf_file}"]
    else:  # `repo:quant`: llama.cpp finds the quantization's file (every part of a split one)
        model = ["--hf-repo", f"{ckpt.repo}:{ckpt.quant}"]
    return [
        "--host", "0.0.0.0",
        "--port", str(port),
        *model,
        *(["--n-gpu-layers", "999"] if opts.gpu else []),  # every layer on the GPUs
        *llama_server_options(opts.parallel, MAX_MODEL_LEN),
    ]  # fmt: skip


def _tgi(ckpt: Checkpoint, tp: int, port: int, listen: list[str], opts: ComposeOptions) -> list[str]:
    # No --quantize/--dtype for GPTQ/AWQ repos: TGI reads the quantization config itself.
    return [
        "--model-id", ckpt.repo,
        "--num-shard", str(tp),
        "--max-input-tokens", str(TGI_MAX_INPUT),
        "--max-total-tokens", str(TGI_MAX_TOTAL),
        "--max-batch-prefill-tokens", str(TGI_MAX_PREFILL),
        "--usage-stats", "off",
        *listen,
    ]  # fmt: skip


def _vllm(ckpt: Checkpoint, tp: int, port: int, listen: list[str], opts: ComposeOptions) -> list[str]:
    # Never --quantization gptq|awq: vLLM picks the fast Marlin kernels itself; forcing it slows down.
    return [
        "--model", ckpt.repo,
        "--tensor-parallel-size", str(tp),
        "--gpu-memory-utilization", "0.90",
        "--max-model-len", str(MAX_MODEL_LEN),
        *listen,
    ]  # fmt: skip


def _sglang(ckpt: Checkpoint, tp: int, port: int, listen: list[str], opts: ComposeOptions) -> list[str]:
    return [
        "python3", "-m", "sglang.launch_server",
        "--model-path", ckpt.repo,
        "--host", "0.0.0.0",
        "--port", str(port),
        "--tp", str(tp),
    ]  # fmt: skip


@dataclass(frozen=True)
class DeploySpec:
    """Everything the deployment renderings (Compose, Kubernetes) need of one serving backend:
    adding a deployable backend is one entry of ``SPECS`` (and its name in the registry)."""

    image: str  # the official image, pinned
    port: int  # where it listens in the container by default
    cache_mount: str  # where the Hugging Face cache is mounted
    command: Callable[[Checkpoint, int, int, list[str], ComposeOptions], list[str]]  # (ckpt, tp, port, listen, options)
    cache_env: tuple[str, ...] = ()
    cpu_image: str | None = None  # --cpu: the same build without CUDA (None: the same image)
    gguf: bool = False  # serves GGUF files (the llama.cpp matrix, --model-dir, no NCCL shards)


SPECS: dict[str, DeploySpec] = {
    # TGI is in maintenance mode upstream (README); 3.3.x is its last line.
    "tgi": DeploySpec(
        "ghcr.io/huggingface/text-generation-inference:3.3.6", 80, "/data", _tgi,
        ("HF_HUB_CACHE=/data/hub", "HUGGINGFACE_HUB_CACHE=/data/hub"),
    ),
    "vllm": DeploySpec("vllm/vllm-openai:v0.11.0", 8000, HF_HOME_MOUNT, _vllm),
    "sglang": DeploySpec("lmsysorg/sglang:v0.5.4", 30000, HF_HOME_MOUNT, _sglang),
    # llama.cpp's official server image (entrypoint /app/llama-server, curl inside), a pinned build.
    "llamacpp": DeploySpec(
        "ghcr.io/ggml-org/llama.cpp:server-cuda-b10481", 8080, HF_HOME_MOUNT, _llamacpp,
        (f"LLAMA_CACHE={HF_HOME_MOUNT}/llama.cpp",), "ghcr.io/ggml-org/llama.cpp:server-b10481", gguf=True,
    ),
}  # fmt: skip
assert tuple(SPECS) == COMPOSE_BACKENDS, "every deployable backend in registry.COMPOSE_BACKENDS has a spec, in order"
# Each spec field by backend, for the renderings that read one of them.
IMAGES = {name: spec.image for name, spec in SPECS.items()}
CONTAINER_PORT = {name: spec.port for name, spec in SPECS.items()}
CACHE_MOUNT = {name: spec.cache_mount for name, spec in SPECS.items()}
CACHE_ENV = {name: list(spec.cache_env) for name, spec in SPECS.items()}


def server_command(backend: str, ckpt: Checkpoint, tp: int, port: int | None = None,
                   options: ComposeOptions | None = None) -> list[str]:  # fmt: skip
    """The server's arguments (TGI, vLLM, llama.cpp) or full command (SGLang) for a checkpoint;
    ``port``: where it listens in the container (its default when None)."""
    spec = SPECS[backend]
    port = port or spec.port
    listen = [] if port == spec.port else ["--port", str(port)]
    if options is None:
        from orchestrator.compose import ComposeOptions

        options = ComposeOptions(backend=backend)
    return spec.command(ckpt, tp, port, listen, options)
