"""Compose files for the checkpoint matrix: render, check, and discover targets from them.

One service per checkpoint (TGI, vLLM and SGLang serve the safetensors matrix, llama.cpp's
``llama-server`` the GGUF one), pinned to its GPUs (``deploy.resources.reservations.devices`` with
``device_ids``), its own host port, a shared Hugging Face cache, ``HF_TOKEN`` passed through from
the environment (never written into the file), shared memory for NCCL, a ``/health`` healthcheck
with a long start period, profiles per size and per quantization, the order in which the size
profiles are brought up in turn (``x-orchestrator.turns``), and labels that let
``orchestrate bench --compose`` find the targets.

``lifecycle.plan_turns`` reads the labelled services back as the targets of a run.
``check_compose`` validates a file against the Compose Specification JSON schema and then checks
what the schema cannot express: count and device_ids never together, a GPU never given to two
services that can run together (unless the file says GPUs are reused across size profiles), host
ports unique, TGI's token limits ordered, and the tensor-parallel size valid for the model.
"""

from __future__ import annotations

import itertools
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from orchestrator.deploy import (
    CACHE_ENV,
    CACHE_MOUNT,
    CONTAINER_PORT,
    LLAMACPP_SLOTS,
    MAX_MODEL_LEN,
    MODEL_DIR_MOUNT,
    SPECS,
    server_command,
)
from orchestrator.errors import UserError
from orchestrator.matrix import Checkpoint, MatrixError, by_repo, gguf_checkpoint, select
from orchestrator.registry import COMPOSE_BACKENDS

BACKENDS = COMPOSE_BACKENDS
LABEL = "orchestrator"
# How often Docker asks /health: also how soon `docker compose up --wait` sees a server ready.
HEALTH_INTERVAL = "5s"


class ComposeError(UserError, ValueError):
    """A compose request or file that cannot be used; one line for the user."""


@dataclass(frozen=True)
class ComposeOptions:
    """What `orchestrate compose` renders."""

    backend: str = "tgi"
    sizes: tuple[str, ...] = ()
    quants: tuple[str, ...] = ()
    gpus: tuple[str, ...] = tuple(str(i) for i in range(8))
    first_port: int = 8001
    hf_cache: str = "${HF_HOME:-${HOME}/.cache/huggingface}"
    reuse_gpus_across_sizes: bool = True
    tp: dict[str, int] = field(default_factory=dict)  # Hub id -> tensor-parallel size override
    image: str | None = None  # every service's image instead of the backend's official one
    gpu: bool = True  # False: no GPU reservations (a CPU image; llama.cpp without layer offload)
    network_host: bool = False  # network_mode host: each server listens on its host port itself
    model_dir: str | None = None  # llamacpp: GGUF files from this host folder instead of the Hub
    parallel: int = LLAMACPP_SLOTS  # llamacpp: slots per server

    def command_line(self) -> str:
        """The `orchestrate compose` call that renders these options (for the file header)."""
        default = ComposeOptions()
        parts = ["orchestrate compose", f"--backend {self.backend}"]
        if self.sizes:
            parts.append("--sizes " + ",".join(self.sizes))
        if self.quants:
            parts.append("--quants " + ",".join(self.quants))
        if self.gpus != default.gpus:
            parts.append("--gpus " + ",".join(self.gpus))
        if self.first_port != default.first_port:
            parts.append(f"--first-port {self.first_port}")
        if self.hf_cache != default.hf_cache:
            parts.append(f"--hf-cache {self.hf_cache}")
        if not self.reuse_gpus_across_sizes:
            parts.append("--no-gpu-reuse")
        if self.image:
            parts.append(f"--image {self.image}")
        if not self.gpu:
            parts.append("--cpu")
        if self.network_host:
            parts.append("--network-host")
        if self.model_dir:
            parts.append(f"--model-dir {self.model_dir}")
        if self.parallel != default.parallel:
            parts.append(f"--parallel {self.parallel}")
        return " ".join(parts)

    def image_of(self, backend: str) -> str:
        """The image a backend's services run."""
        if self.image:
            return self.image
        spec = SPECS[backend]
        return spec.cpu_image or spec.image if not self.gpu else spec.image


def _service(ckpt: Checkpoint, tp: int, gpu_ids: list[str], host_port: int, options: ComposeOptions) -> dict[str, Any]:
    backend = options.backend
    # On the host's network a server listens on its host port itself (nothing is published).
    port = host_port if options.network_host else CONTAINER_PORT[backend]
    local_models = SPECS[backend].gguf and options.model_dir
    service: dict[str, Any] = {
        "image": options.image_of(backend),
        "command": server_command(backend, ckpt, tp, port, options),
        "ports": [f"{host_port}:{port}"],
        "volumes": [f"{options.model_dir}:{MODEL_DIR_MOUNT}:ro"]
        if local_models
        else [f"hf-cache:{CACHE_MOUNT[backend]}"],
        # HF_TOKEN is passed through from the shell that runs `docker compose`: never in the file.
        "environment": ["HF_TOKEN", *([] if local_models else CACHE_ENV[backend])],
        "healthcheck": {
            "test": ["CMD-SHELL", f"curl -fsS http://127.0.0.1:{port}/health || exit 1"],
            "interval": HEALTH_INTERVAL,
            "timeout": "10s",
            "retries": 3,
            # Downloading and loading a 72B checkpoint takes long; do not count that as failures.
            "start_period": "40m",
        },
        "profiles": [ckpt.profile_size, ckpt.profile_quant, "all"],
        "labels": {
            f"{LABEL}.model": ckpt.model,
            # The model's own Hub id (a GGUF's base model): its tokenizer and chat template.
            f"{LABEL}.model_id": ckpt.base_repo if ckpt.is_gguf else ckpt.repo,
            f"{LABEL}.quantization": ckpt.quant,
            f"{LABEL}.backend": backend,
            f"{LABEL}.tensor_parallel": str(tp),
        },
        # A server that dies is a failed target, seen as such: never restarted behind the run's back.
        "restart": "no",
    }
    if options.gpu:  # after the environment, where it has always been in the checked-in files
        device = {"driver": "nvidia", "device_ids": gpu_ids, "capabilities": ["gpu"]}
        at = list(service).index("environment") + 1
        items = list(service.items())
        service = dict([*items[:at], ("deploy", {"resources": {"reservations": {"devices": [device]}}}), *items[at:]])
    if options.network_host:
        service["network_mode"] = "host"
    if tp > 1 and not SPECS[backend].gguf:
        service["ipc"] = "host"  # NCCL between shards needs more than a private /dev/shm
    else:
        service["shm_size"] = "1g"
    return service


def selected(backend: str, sizes: tuple[str, ...], quants: tuple[str, ...]) -> list[Checkpoint]:
    """The checkpoints a deployment covers (all by default; llamacpp: the GGUF matrix);
    ComposeError for a bad choice."""
    if backend not in BACKENDS:
        raise ComposeError(f"unknown backend {backend!r} (expected one of {', '.join(BACKENDS)})")
    try:
        checkpoints = select(list(sizes) or None, list(quants) or None, gguf=SPECS[backend].gguf)
    except MatrixError as exc:
        raise ComposeError(str(exc)) from None
    if not checkpoints:
        raise ComposeError("no checkpoint matches the selected sizes and quantizations")
    return checkpoints


def render_compose(options: ComposeOptions) -> dict[str, Any]:
    """The Compose document for the selected checkpoints on one backend."""
    checkpoints = selected(options.backend, options.sizes, options.quants)
    services: dict[str, Any] = {}
    cursor = 0
    current_size = None
    for i, ckpt in enumerate(checkpoints):
        if options.reuse_gpus_across_sizes and ckpt.size != current_size:
            cursor = 0  # each size profile is a box of its own: its services start at the first GPU
        current_size = ckpt.size
        if ckpt.is_gguf:  # llama.cpp splits layers: as many GPUs as weights and KV cache need
            tp = ckpt.gguf_gpus(options.parallel, MAX_MODEL_LEN) if options.gpu else 1
        else:
            tp = options.tp.get(ckpt.repo, ckpt.default_tp)
            try:
                ckpt.check_tp(tp)
            except MatrixError as exc:
                raise ComposeError(str(exc)) from None
        if not options.gpu:
            services[ckpt.slug] = _service(ckpt, tp, [], options.first_port + i, options)
            continue
        if cursor + tp > len(options.gpus):
            raise ComposeError(
                f"not enough GPUs for {ckpt.repo}: needs {tp} more, {len(options.gpus) - cursor} left of "
                f"{len(options.gpus)} (give more with --gpus, or select fewer checkpoints)"
            )
        gpu_ids = list(options.gpus[cursor : cursor + tp])
        cursor += tp
        services[ckpt.slug] = _service(ckpt, tp, gpu_ids, options.first_port + i, options)
    doc: dict[str, Any] = {"name": f"qwen2-{options.backend}", "services": services}
    if not (SPECS[options.backend].gguf and options.model_dir):
        doc["volumes"] = {"hf-cache": {"driver": "local", "driver_opts": {"type": "none", "o": "bind",
                                                                          "device": options.hf_cache}}}  # fmt: skip
    # `orchestrate bench --compose FILE --all-profiles` brings the size profiles up in this order,
    # one at a time (each is a box of its own).
    sizes = list(dict.fromkeys(c.profile_size for c in checkpoints))
    doc["x-orchestrator"] = {"turns": sizes}
    if options.reuse_gpus_across_sizes:
        doc["x-orchestrator"]["gpu_reuse"] = "across-sizes"
    return doc


def dump_compose(doc: dict[str, Any], options: ComposeOptions) -> str:
    """YAML text with a header saying how it was made."""
    header = (
        f"# Generated by `{options.command_line()}` - do not edit; regenerate instead.\n"
        "# HF_TOKEN comes from the environment of `docker compose`. Every size in turn, benched into one\n"
        "# report: `orchestrate bench --compose <this file> --all-profiles`; one by hand:\n"
        "# `docker compose -f <this file> --profile 7b up -d`.\n"
    )
    return header + yaml.safe_dump(doc, sort_keys=False, width=120)


# ---------------------------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------------------------
def schema_path() -> Path:
    """The Compose Specification schema: $ORCHESTRATOR_COMPOSE_SCHEMA or ../shared/specs beside the checkout."""
    env = os.environ.get("ORCHESTRATOR_COMPOSE_SCHEMA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "shared" / "specs" / "compose-spec" / "compose-spec.json"


def _flag(command: list[str], *names: str) -> str | None:
    for i, arg in enumerate(command):
        for name in names:
            if arg == name and i + 1 < len(command):
                return command[i + 1]
            if arg.startswith(name + "="):
                return arg.split("=", 1)[1]
    return None


def host_ports(service: dict[str, Any]) -> list[tuple[int, str]]:
    """(published host port, key path) of each of a service's port entries that publishes one."""
    out = []
    for i, entry in enumerate(service.get("ports") or []):
        if isinstance(entry, dict):
            published = entry.get("published")
        else:
            parts = str(entry).split(":")
            published = parts[-2] if len(parts) >= 2 else None
        if published is not None and str(published).isdigit():
            out.append((int(published), f"ports[{i}]"))
    return out


def reserved_gpus(service: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(device ids, problems) of a service's GPU reservations."""
    devices = (((service.get("deploy") or {}).get("resources") or {}).get("reservations") or {}).get("devices") or []
    ids: list[str] = []
    problems = []
    for i, dev in enumerate(devices):
        if not isinstance(dev, dict):
            continue
        where = f"deploy.resources.reservations.devices[{i}]"
        if "count" in dev and "device_ids" in dev:
            problems.append(f"{where}: count and device_ids together (Compose refuses it; give device_ids)")
        ids += [str(d) for d in dev.get("device_ids") or []]
    return ids, problems


def check_compose(doc: Any, source: str, schema: Path | None = None) -> list[str]:
    """Every problem of a Compose document, each as 'source: key path: what is wrong'."""
    import jsonschema

    schema_file = schema or schema_path()
    try:
        spec = json.loads(schema_file.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ComposeError(f"cannot read the Compose schema {schema_file} ({exc.strerror})") from None
    problems: list[str] = []
    validator = jsonschema.Draft7Validator(spec)
    for err in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path))):
        where = ".".join(str(p) for p in err.absolute_path) or "(top level)"
        problems.append(f"{source}: {where}: {err.message}")
    if problems or not isinstance(doc, dict):
        return problems
    services = doc.get("services") or {}
    reuse_across_sizes = (doc.get("x-orchestrator") or {}).get("gpu_reuse") == "across-sizes"
    gpu_owner: dict[str, list[str]] = {}
    port_owner: dict[int, str] = {}
    for name, svc in services.items():
        prefix = f"{source}: services.{name}"
        ids, gpu_problems = reserved_gpus(svc)
        problems += [f"{prefix}.{p}" for p in gpu_problems]
        for gpu in ids:
            gpu_owner.setdefault(gpu, []).append(name)
        for port, where in host_ports(svc):
            if port in port_owner:
                problems.append(f"{prefix}.{where}: host port {port} is also used by service {port_owner[port]}")
            else:
                port_owner[port] = name
        command = svc.get("command") or []
        if isinstance(command, str):
            command = command.split()
        labels = svc.get("labels") or {}
        if isinstance(labels, list):
            labels = dict(item.split("=", 1) for item in labels if "=" in item)
        tgi_in = _flag(command, "--max-input-tokens")
        tgi_total = _flag(command, "--max-total-tokens")
        tgi_prefill = _flag(command, "--max-batch-prefill-tokens")
        if tgi_in and tgi_total and int(tgi_in) >= int(tgi_total):
            problems.append(
                f"{prefix}.command: --max-input-tokens {tgi_in} must be below --max-total-tokens {tgi_total}"
            )
        if tgi_in and tgi_prefill and int(tgi_prefill) < int(tgi_in):
            problems.append(
                f"{prefix}.command: --max-batch-prefill-tokens {tgi_prefill} must be at least "
                f"--max-input-tokens {tgi_in}"
            )
        repo = labels.get(f"{LABEL}.model_id") or _flag(command, "--model-id", "--model", "--model-path")
        if labels.get(f"{LABEL}.backend") == "llamacpp":
            problems += _llamacpp_problems(prefix, repo, labels.get(f"{LABEL}.quantization"), command, ids)
            continue
        tp_text = _flag(command, "--num-shard", "--tensor-parallel-size", "--tp", "--tp-size") or "1"
        ckpt = by_repo(repo) if repo else None
        if ckpt is not None and tp_text.isdigit():
            problem = ckpt.tp_problem(int(tp_text))
            if problem:
                problems.append(f"{prefix}.command: {ckpt.repo} at tensor-parallel {tp_text}: {problem}")
            elif ids and len(ids) < int(tp_text):
                problems.append(f"{prefix}.deploy: tensor-parallel {tp_text} but only {len(ids)} GPUs reserved")
    for gpu, owners in gpu_owner.items():
        if len(owners) < 2:
            continue
        for a, b in itertools.combinations(owners, 2):
            if reuse_across_sizes and _size(services[a]) != _size(services[b]):
                continue  # different size profiles: declared as never started together
            problems.append(f"{source}: services.{b}.deploy.resources.reservations: GPU {gpu} is also given to {a}")
    return problems


def _llamacpp_problems(
    prefix: str, repo: str | None, quant: str | None, command: list[str], ids: list[str]
) -> list[str]:
    """A llama-server service given fewer GPUs than its GGUF and KV cache need."""
    ckpt = gguf_checkpoint(repo, quant) if repo and quant else None
    slots, ctx = _flag(command, "--parallel", "-np"), _flag(command, "--ctx-size", "-c")
    if ckpt is None or not ids or not (slots and ctx and slots.isdigit() and ctx.isdigit()) or not int(slots):
        return []  # not a matrix GGUF, or on the CPU, or sizes the server picks itself
    need = ckpt.gguf_gpus(int(slots), int(ctx) // int(slots))
    if len(ids) >= need:
        return []
    gb = ckpt.memory_gb(int(slots), int(ctx) // int(slots))
    what = f"{ckpt.repo} {ckpt.quant} with {slots} slots"
    return [f"{prefix}.deploy: {what} needs {need} GPUs ({gb:.0f} GB), {len(ids)} reserved"]


def _size(service: dict[str, Any]) -> str | None:
    labels = service.get("labels") or {}
    repo = labels.get(f"{LABEL}.model_id") if isinstance(labels, dict) else None
    ckpt = by_repo(repo) if repo else None
    return ckpt.size if ckpt else None


def load_compose(path: Path) -> dict[str, Any]:
    """Read a Compose file; ComposeError with one line if it is not YAML."""
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ComposeError(f"{path}: cannot read file ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise ComposeError(f"{path}: invalid YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(doc, dict):
        raise ComposeError(f"{path}: expected a Compose mapping")
    return doc
