"""The command line: every command's arguments, and which function runs it."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import orchestrator.cli
from orchestrator import __version__
from orchestrator.cli.bench import cmd_bench
from orchestrator.cli.commands import cmd_compose, cmd_k8s, cmd_report, cmd_score, cmd_validate
from orchestrator.cli.common import DATA_DIR_ENV
from orchestrator.cli.gate import add_gate_args, cmd_gate
from orchestrator.cli.load import cmd_load
from orchestrator.registry import BACKENDS, COMPOSE_BACKENDS, K8S_BACKENDS, LOAD_PROMPTS


def _matrix_args(parser: argparse.ArgumentParser, default_backend: str, backends: Sequence[str]) -> None:
    """Backend and checkpoint selection, shared by `compose` and `k8s`."""
    parser.add_argument("--backend", choices=backends, default=default_backend)
    parser.add_argument("--sizes", help="comma-separated: 0.5b,1.5b,7b,72b (default: all)")
    parser.add_argument(
        "--quants",
        help="comma-separated: bf16,gptq-int8,gptq-int4,awq (default: all); llamacpp: GGUF files "
        "fp16,q8_0,q6_k,q5_k_m,q5_0,q4_k_m,q4_0,q3_k_m,q2_k (default: fp16,q8_0,q5_k_m,q4_k_m)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    doc = (orchestrator.cli.__doc__ or "").split("\n\n")
    p = argparse.ArgumentParser(
        prog="orchestrate",
        description=doc[0].strip(),
        epilog=" ".join(doc[-1].split()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"orchestrator {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    b = sub.add_parser("bench", help="run accuracy tasks and time every request")
    b.add_argument("manifest", nargs="?", help="run manifest (YAML)")
    b.add_argument("--resume", metavar="RUN_DIR", help="continue a run: only samples without a record are sent")
    b.add_argument("--run-id", help="run directory name under output_dir (re-using one resumes it)")
    b.add_argument("--limit", type=int, help="per-task limit (deterministic, stratified by subject)")
    b.add_argument("--data-dir", help=f"local data root with mmlu/ and ceval/ (also ${DATA_DIR_ENV})")
    b.add_argument("--concurrency", type=int, help="in-flight requests per target")
    b.add_argument(
        "--noise-floor",
        action="store_true",
        help="send each reference target's samples twice more (at the run's concurrency and at 1): what serving "
        "alone changes, the floor the quantization deltas are read against (also run.noise_floor)",
    )
    b.add_argument("--tasks", help="comma-separated subset of the manifest's tasks")
    b.add_argument(
        "--compose",
        metavar="FILE",
        help="bench a Compose file's labelled services, its profiles brought up, benched and taken down in turn",
    )
    b.add_argument("--profile", action="append", help="with --compose: the profiles, in order (0.5b,7b; repeatable)")
    b.add_argument("--all-profiles", action="store_true", help="with --compose: every profile (the file's turns)")
    b.add_argument(
        "--health-timeout",
        type=float,
        help="with --compose: seconds for a turn to become healthy (default: as long as the services' healthchecks "
        "allow: start period + retries; 1800 without one)",
    )
    b.add_argument("--keep-up", action="store_true", help="with --compose: leave the last (or interrupted) turn up")
    b.add_argument(
        "--running",
        action="store_true",
        help="with --compose: the services are up already (docker compose up by hand): wait for /health and "
        "bench them; nothing is started or stopped",
    )
    b.add_argument("--dry-run", action="store_true", help="with --compose: print the turns, start nothing")
    b.add_argument(
        "--backend",
        choices=BACKENDS,
        help="swap the serving backend of every target (same URLs, another adapter)",
    )
    b.add_argument(
        "--no-speed-phase",
        action="store_true",
        help="skip the controlled speed phase (the table's speed columns then stay empty; the accuracy pass's "
        "timings are in report.json/html, under the evaluation workload)",
    )
    b.add_argument("--gpu", help="roofline: GPU of the servers (h100, a100, h200, ...): batch-1 decode vs bandwidth")
    b.add_argument("--bandwidth-gbs", type=float, help="roofline: memory bandwidth per GPU, GB/s")
    b.add_argument("--gpus-per-target", type=int, default=1, help="roofline: GPUs each server reads weights with")
    b.add_argument("--no-progress", action="store_true", help="no progress bars")
    b.add_argument(
        "--gate",
        action="store_true",
        help="judge the run when it ends, as `orchestrate gate` does (its limits below); exit 5 when it fails",
    )
    add_gate_args(b)
    b.set_defaults(func=cmd_bench)

    ld = sub.add_parser(
        "load",
        help="load-test the targets: fixed concurrency, constant or Poisson rates, sweeps, SLO goodput",
        description="Metrics as vLLM names them: TTFT (time to first token), TPOT (time per output token; "
        "AIPerf/guidellm: inter-token latency per request), ITL (inter-token latency, pooled), E2EL "
        "(end-to-end latency; guidellm: request latency), request/output/total token throughput, queue time "
        "(client-side wait before send), dispatch lag (actual - intended send time), post time "
        "(client-side, after the reply's last byte).",
    )
    ld.add_argument("manifest")
    ld.add_argument("--mode", choices=["concurrency", "constant", "poisson"])
    ld.add_argument("--levels", help="comma-separated concurrencies or rates (req/s), or 'auto' (find saturation)")
    ld.add_argument("--requests", type=int, help="requests per level after warm-up")
    ld.add_argument("--duration", type=float, help="seconds per level at most")
    ld.add_argument("--warmup", type=int, help="requests per level excluded from statistics")
    ld.add_argument("--input-tokens", type=int)
    ld.add_argument("--output-tokens", type=int)
    ld.add_argument("--max-concurrency", type=int, help="rate modes: cap of in-flight requests (client queue)")
    ld.add_argument("--slo", help="goodput SLOs, e.g. ttft=200ms,tpot=50ms")
    ld.add_argument("--percentiles", help="e.g. 50,90,99")
    ld.add_argument("--no-ignore-eos", action="store_true", help="let the model stop early")
    ld.add_argument(
        "--prompts",
        choices=LOAD_PROMPTS,
        help="synthetic prompts of --input-tokens tokens (default), or a benchmark's own (needs run.data_dir or Hub)",
    )
    ld.add_argument("--gpu", help="roofline estimate: GPU of the servers (h100, a100, h200, l40s, l4, ...)")
    ld.add_argument("--bandwidth-gbs", type=float, help="roofline estimate: memory bandwidth per GPU, GB/s")
    ld.add_argument("--gpus-per-target", type=int, default=1, help="roofline: GPUs each server reads weights with")
    ld.add_argument("--run-id")
    ld.add_argument("--no-progress", action="store_true")
    ld.set_defaults(func=cmd_load)

    r = sub.add_parser("report", help="re-render a run's tables from disk; two runs: side by side")
    r.add_argument("run_dir")
    r.add_argument("other_run", nargs="?", help="a second run of the same checkpoints (e.g. another backend)")
    r.add_argument(
        "--reference",
        metavar="FILE",
        help="published figures to compare with (JSON; default: the shipped tables, Qwen docs' and SmolLM2's card)",
    )
    r.set_defaults(func=cmd_report)

    s = sub.add_parser("score", help="re-score stored replies (no server), or score an IFEval responses file")
    s.add_argument("run_dir", nargs="?")
    s.add_argument("--responses", metavar="FILE", help="JSONL of {prompt, response} (official input_response format)")
    s.add_argument("--task", choices=["ifeval"], help="task of the responses file")
    s.add_argument("--data-dir", help=f"local data root (also ${DATA_DIR_ENV}); default: the Hub or the run's")
    s.add_argument("--output-dir", help="where eval_results_{strict,loose}.jsonl go (default: beside FILE)")
    s.set_defaults(func=cmd_score)

    c = sub.add_parser("compose", help="render Compose files for the Qwen2 checkpoint matrix, or --check one")
    _matrix_args(c, default_backend="tgi", backends=COMPOSE_BACKENDS)
    c.add_argument("--gpus", default="0,1,2,3,4,5,6,7", help="GPU ids to assign, in order")
    c.add_argument("--first-port", type=int, default=8001, help="host port of the first service")
    c.add_argument("--hf-cache", help="host folder of the Hugging Face cache (default: $HF_HOME)")
    c.add_argument("--no-gpu-reuse", action="store_true", help="never give a GPU to two services, even across sizes")
    c.add_argument("--image", help="every service's image instead of the backend's official one")
    c.add_argument("--cpu", action="store_true", help="no GPU reservations (a CPU image; llama.cpp: its CPU image)")
    c.add_argument("--network-host", action="store_true", help="network_mode host: servers listen on the host ports")
    c.add_argument("--model-dir", help="llamacpp: host folder of GGUF files (Hub names), mounted read-only")
    c.add_argument("--parallel", type=int, default=8, help="llamacpp: slots per server (each 8,192 tokens)")
    c.add_argument("-o", "--output", help="write here instead of stdout")
    c.add_argument("--check", metavar="FILE", help="check a Compose file (schema + GPU, port, token, TP rules)")
    c.add_argument("--schema", help="compose-spec.json (default: $ORCHESTRATOR_COMPOSE_SCHEMA or ../shared/specs)")
    c.set_defaults(func=cmd_compose)

    k = sub.add_parser("k8s", help="render Kubernetes manifests for the checkpoint matrix (more than one host)")
    _matrix_args(k, default_backend="vllm", backends=K8S_BACKENDS)
    k.add_argument("--namespace", default="llm-bench")
    k.add_argument("--replicas", type=int, default=1, help="server replicas per checkpoint")
    k.add_argument("--storage-class", help="storage class of the shared (ReadWriteMany) Hugging Face cache")
    k.add_argument("--image", default="orchestrator:latest", help="image with orchestrator installed, for the Job")
    k.add_argument("-o", "--output", help="write here instead of stdout")
    k.set_defaults(func=cmd_k8s)

    gt = sub.add_parser(
        "gate",
        help="CI regression gate: fail (exit 5) when a row lost more than tolerated, with the run's own confidence",
    )
    gt.add_argument("run_dir", help="run directory")
    add_gate_args(gt)
    gt.set_defaults(func=cmd_gate)

    v = sub.add_parser("validate", help="validate a manifest")
    v.add_argument("manifest")
    v.set_defaults(func=cmd_validate)
    return p
