"""Names defined once: the tasks (with their report titles) and the serving backends.

Light on purpose (no imports): the manifest, the CLI's argument parser, the report, Compose
discovery, Kubernetes and the load tests all read these, and `orchestrate --help` must stay fast.
A new task is an entry here plus its module under orchestrator/tasks/ (see ARCHITECTURE.md).
"""

from __future__ import annotations

from typing import Literal, get_args

# Task name -> column title, in table order; the multiple-choice ones (a letter per question: their
# averages, subjects and answer-letter probabilities are reported). How each is built:
# orchestrator.tasks.TASK_BUILDERS.
TASKS: dict[str, str] = {"mmlu": "MMLU", "ceval": "C-Eval", "ifeval": "IFEval"}
MULTIPLE_CHOICE_TASKS = ("mmlu", "ceval")

# Quantization names of a full-precision row: each model's quantizations are compared with the first
# of its rows named one of these, in this order.
REFERENCE_QUANTS = ("BF16", "FP16", "F16", "FP32", "F32")

# The backends a target can name (an adapter each in orchestrator/backends).
BackendKind = Literal["openai", "vllm", "llamacpp", "tgi", "tgi-chat", "sglang"]
BACKENDS: tuple[str, ...] = get_args(BackendKind)
# The backends the deployment renderings know (official images, server commands, health checks).
COMPOSE_BACKENDS = ("tgi", "vllm", "sglang", "llamacpp")
K8S_BACKENDS = ("tgi", "vllm", "sglang")

# The llama.cpp servers a managed target can start: "auto" is llama.cpp's own C++ server where one
# is found (parallel slots, continuous batching), else llama-cpp-python's (one request at a time).
LlamaServerKind = Literal["auto", "llama-server", "llama-cpp-python"]

# Prompts a load test can send: synthetic ones of exact length, or a task's own.
LoadPrompts = Literal["synthetic", "mmlu", "ceval", "ifeval"]
LOAD_PROMPTS: tuple[str, ...] = get_args(LoadPrompts)
assert ("synthetic", *TASKS) == LOAD_PROMPTS, "LoadPrompts names every task"  # a Literal cannot be derived
