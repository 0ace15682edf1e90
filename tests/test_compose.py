"""Checkpoint matrix, Compose rendering, validation against the Compose Specification, discovery."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestrator.cli import main
from orchestrator.compose import (
    BACKENDS,
    ComposeError,
    ComposeOptions,
    check_compose,
    dump_compose,
    render_compose,
)
from orchestrator.lifecycle import plan_turns
from orchestrator.matrix import MATRIX, MatrixError, select

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def schema(data_dir: Path) -> Path:
    return data_dir.parent / "specs" / "compose-spec" / "compose-spec.json"


def test_matrix_hub_ids_gpus_and_tp() -> None:
    assert len(MATRIX) == 16
    repos = {c.repo for c in MATRIX}
    assert "Qwen/Qwen2-7B-Instruct-GPTQ-Int4" in repos and "Qwen/Qwen2-72B-Instruct-AWQ" in repos
    tp = {c.repo: c.valid_tp() for c in MATRIX}
    assert tp["Qwen/Qwen2-0.5B-Instruct"] == (1, 2)  # 14 heads
    assert tp["Qwen/Qwen2-1.5B-Instruct-AWQ"] == tp["Qwen/Qwen2-1.5B-Instruct-GPTQ-Int4"] == (1, 2)
    assert tp["Qwen/Qwen2-7B-Instruct"] == (1, 2, 4)
    assert tp["Qwen/Qwen2-72B-Instruct"] == (2, 4, 8)
    gpus = {c.repo: (c.min_gpus, c.default_tp) for c in select(["72b"])}
    assert gpus["Qwen/Qwen2-72B-Instruct"] == (2, 4)
    assert gpus["Qwen/Qwen2-72B-Instruct-GPTQ-Int8"] == (2, 2)
    assert gpus["Qwen/Qwen2-72B-Instruct-AWQ"] == (1, 1)
    with pytest.raises(MatrixError, match="8960/4 = 2240 is not a multiple"):
        select(["1.5b"], ["awq"])[0].check_tp(4)
    with pytest.raises(MatrixError, match="at least 2 GPUs"):
        select(["72b"], ["bf16"])[0].check_tp(1)


@pytest.mark.parametrize("backend", BACKENDS)
def test_checked_in_files_validate_and_match_the_generator(backend: str, schema: Path) -> None:
    path = REPO / "compose" / f"qwen2-{backend}.yaml"
    options = ComposeOptions(backend=backend)
    assert path.read_text() == dump_compose(render_compose(options), options), "regenerate with orchestrate compose"
    doc = yaml.safe_load(path.read_text())
    assert check_compose(doc, str(path), schema) == []
    assert len(doc["services"]) == 16
    seven_b = [n for n, s in doc["services"].items() if "7b" in s["profiles"]]
    assert len(seven_b) == 4  # `docker compose --profile 7b up` starts four servers
    ports = [int(s["ports"][0].split(":")[0]) for s in doc["services"].values()]
    assert len(set(ports)) == 16
    for svc in doc["services"].values():
        assert "HF_TOKEN" in svc["environment"]  # passed through, never a value
        assert not any(e.startswith("HF_TOKEN=") for e in svc["environment"])
        dev = svc["deploy"]["resources"]["reservations"]["devices"][0]
        assert dev["driver"] == "nvidia" and dev["capabilities"] == ["gpu"] and "count" not in dev
        tp = int(svc["labels"]["orchestrator.tensor_parallel"])
        assert len(dev["device_ids"]) == tp
        sharded = tp > 1 and backend != "llamacpp"  # NCCL shards; llama.cpp splits layers, no NCCL
        assert ("ipc" in svc) == sharded and ("shm_size" in svc) == (not sharded)
        assert "/health" in svc["healthcheck"]["test"][1] and svc["healthcheck"]["start_period"] == "40m"
        assert svc["restart"] == "no"  # a dead server is a failed target, never restarted behind the run
        command = svc["command"]
        assert "--quantization" not in command and "--quantize" not in command and "--dtype" not in command
    assert doc["x-orchestrator"]["turns"] == ["0.5b", "1.5b", "7b", "72b"]


def test_backend_specifics() -> None:
    tgi = render_compose(ComposeOptions(backend="tgi", sizes=("72b",)))["services"]["qwen2-72b-bf16"]
    assert tgi["ports"] == ["8001:80"] and "--num-shard" in tgi["command"] and "--usage-stats" in tgi["command"]
    assert tgi["command"][tgi["command"].index("--num-shard") + 1] == "4"
    vllm = render_compose(ComposeOptions(backend="vllm", sizes=("7b",)))["services"]["qwen2-7b-awq"]
    assert vllm["ports"] == ["8004:8000"] and "--gpu-memory-utilization" in vllm["command"]
    assert vllm["command"][:2] == ["--model", "Qwen/Qwen2-7B-Instruct-AWQ"]
    sglang = render_compose(ComposeOptions(backend="sglang", sizes=("0.5b",)))["services"]["qwen2-0.5b-bf16"]
    assert sglang["command"][:3] == ["python3", "-m", "sglang.launch_server"] and "30000" in sglang["ports"][0]


def test_llamacpp_serves_the_gguf_matrix_with_gpus_from_weights_and_kv_cache(schema: Path) -> None:
    doc = render_compose(ComposeOptions(backend="llamacpp"))
    services = doc["services"]
    assert [s["labels"]["orchestrator.quantization"] for s in services.values()][:4] == [
        "FP16",
        "Q8_0",
        "Q5_K_M",
        "Q4_K_M",
    ]
    q4 = services["qwen2-7b-q4_k_m"]
    command = q4["command"]
    assert command[command.index("--hf-repo") + 1] == "Qwen/Qwen2-7B-Instruct-GGUF:Q4_K_M"
    # Slots and context as a managed llama-server gets them: 8 slots of 8,192 tokens each.
    assert command[command.index("--parallel") + 1] == "8" and command[command.index("--ctx-size") + 1] == "65536"
    assert {"--jinja", "--metrics", "--no-webui"} <= set(command) and "--n-gpu-layers" in command
    assert q4["labels"]["orchestrator.model_id"] == "Qwen/Qwen2-7B-Instruct"  # the tokenizer's, not the GGUF repo
    assert q4["ports"] == ["8012:8080"]
    gpus = {n: len(s["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"]) for n, s in services.items()}
    # 72B: fp16 145 GB + 21 GB of KV cache -> 3 GPUs; Q8_0 77+21 -> 2; Q5_K_M 52+21 -> 2; Q4_K_M 45+21 -> 1.
    assert [gpus[f"qwen2-72b-{q}"] for q in ("fp16", "q8_0", "q5_k_m", "q4_k_m")] == [3, 2, 2, 1]
    assert all(gpus[n] == 1 for n in services if "72b" not in n)
    # More slots need more memory: the check refuses a file that gives a 72B GGUF too few GPUs.
    services["qwen2-72b-q4_k_m"]["command"][command.index("--parallel") + 1] = "32"
    services["qwen2-72b-q4_k_m"]["command"][command.index("--ctx-size") + 1] = str(32 * 8192)
    problems = check_compose(doc, "l.yaml", schema)
    assert any(
        "qwen2-72b-q4_k_m.deploy: Qwen/Qwen2-72B-Instruct-GGUF Q4_K_M with 32 slots needs" in p for p in problems
    )
    with pytest.raises(ComposeError, match="unknown quantization 'awq'"):
        render_compose(ComposeOptions(backend="llamacpp", quants=("awq",)))


def test_cpu_host_network_and_local_models_are_options(tmp_path: Path, schema: Path) -> None:
    options = ComposeOptions(
        backend="llamacpp", sizes=("0.5b",), quants=("q8_0", "f16"), image="local/llama:1", gpu=False,
        network_host=True, model_dir=str(tmp_path), parallel=2, first_port=8101,
    )  # fmt: skip
    doc = render_compose(options)
    assert check_compose(doc, "c.yaml", schema) == []
    assert "volumes" not in doc  # no Hugging Face cache to bind: nothing is downloaded
    fp16, q8 = doc["services"]["qwen2-0.5b-fp16"], doc["services"]["qwen2-0.5b-q8_0"]
    for port, svc in ((8101, fp16), (8102, q8)):
        assert svc["image"] == "local/llama:1" and svc["network_mode"] == "host" and "deploy" not in svc
        # On the host's network the server itself listens on the host port, and so does the health check.
        assert svc["command"][svc["command"].index("--port") + 1] == str(port)
        assert f"127.0.0.1:{port}/health" in svc["healthcheck"]["test"][1]
        assert svc["volumes"] == [f"{tmp_path}:/models:ro"] and "--n-gpu-layers" not in svc["command"]
    assert q8["command"][q8["command"].index("--model") + 1] == "/models/qwen2-0_5b-instruct-q8_0.gguf"
    header = dump_compose(doc, options).splitlines()[0]
    assert f"--cpu --network-host --model-dir {tmp_path} --parallel 2" in header and "--image local/llama:1" in header
    assert ComposeOptions(backend="llamacpp", gpu=False).image_of("llamacpp").endswith(":server-b10481")
    vllm = render_compose(ComposeOptions(backend="vllm", sizes=("0.5b",), quants=("bf16",), network_host=True))
    command = vllm["services"]["qwen2-0.5b-bf16"]["command"]
    assert command[command.index("--port") + 1] == "8001"


def test_not_enough_gpus_and_bad_choices_are_refused() -> None:
    with pytest.raises(ComposeError, match="not enough GPUs"):
        render_compose(ComposeOptions(sizes=("7b",), gpus=("0", "1")))
    with pytest.raises(ComposeError, match="unknown size"):
        render_compose(ComposeOptions(sizes=("13b",)))
    with pytest.raises(ComposeError, match="not a multiple"):
        render_compose(ComposeOptions(sizes=("1.5b",), tp={"Qwen/Qwen2-1.5B-Instruct-AWQ": 4}))


def _mutated(mutate: Any) -> dict[str, Any]:
    doc = copy.deepcopy(render_compose(ComposeOptions(backend="tgi", sizes=("1.5b", "7b"))))
    mutate(doc["services"])
    return doc


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (
            lambda s: s["qwen2-7b-awq"]["deploy"]["resources"]["reservations"]["devices"][0].update(count=1),
            "services.qwen2-7b-awq.deploy.resources.reservations.devices[0]: count and device_ids together",
        ),
        (
            lambda s: s["qwen2-7b-awq"].update(ports=["8001:80"]),
            "services.qwen2-7b-awq.ports[0]: host port 8001 is also used by service qwen2-1.5b-bf16",
        ),
        (
            lambda s: s["qwen2-1.5b-awq"]["command"].__setitem__(3, "4"),
            "services.qwen2-1.5b-awq.command: Qwen/Qwen2-1.5B-Instruct-AWQ at tensor-parallel 4: intermediate size",
        ),
        (
            lambda s: s["qwen2-7b-bf16"]["command"].__setitem__(7, "7168"),
            "services.qwen2-7b-bf16.command: --max-input-tokens 7168 must be below --max-total-tokens 7168",
        ),
        (
            lambda s: s["qwen2-7b-bf16"]["command"].__setitem__(9, "1024"),
            "services.qwen2-7b-bf16.command: --max-batch-prefill-tokens 1024 must be at least",
        ),
        (
            lambda s: s["qwen2-7b-gptq-int8"]["deploy"]["resources"]["reservations"]["devices"][0].update(
                device_ids=["0"]
            ),
            "services.qwen2-7b-gptq-int8.deploy.resources.reservations: GPU 0 is also given to qwen2-7b-bf16",
        ),
        (lambda s: s["qwen2-7b-bf16"].update(gpu_memory="80g"), "services.qwen2-7b-bf16: 'gpu_memory' does not match"),
    ],
)
def test_mutated_files_are_refused_naming_service_and_key(mutate: Any, expected: str, schema: Path) -> None:
    problems = check_compose(_mutated(mutate), "m.yaml", schema)
    assert any(p.startswith(f"m.yaml: {expected}") for p in problems), problems


def test_gpu_reuse_across_sizes_only_when_declared(schema: Path) -> None:
    doc = render_compose(ComposeOptions(backend="vllm", sizes=("1.5b", "7b")))
    assert check_compose(doc, "m.yaml", schema) == []  # 1.5b and 7b boxes both start at GPU 0: declared
    doc.pop("x-orchestrator")
    problems = check_compose(doc, "m.yaml", schema)
    assert any("GPU 0 is also given to qwen2-1.5b-bf16" in p for p in problems)
    strict = render_compose(ComposeOptions(backend="vllm", sizes=("1.5b", "7b"), reuse_gpus_across_sizes=False))
    assert check_compose(strict, "m.yaml", schema) == []


def test_cli_check_and_discovery(tmp_path: Path, schema: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = _mutated(lambda s: s["qwen2-7b-awq"].update(ports=["8001:80"]))
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    assert main(["compose", "--check", str(path), "--schema", str(schema)]) == 2
    err = capsys.readouterr().err
    assert "services.qwen2-7b-awq.ports[0]" in err and "Traceback" not in err
    good = tmp_path / "good.yaml"
    assert main(["compose", "--backend", "vllm", "--sizes", "7b", "-o", str(good), "--schema", str(schema)]) == 0
    assert main(["compose", "--check", str(good), "--schema", str(schema)]) == 0
    targets = [s.target() for s in plan_turns(yaml.safe_load(good.read_text()), good, ["7b"], 60).services]
    assert [t["quantization"] for t in targets] == ["BF16", "GPTQ-Int8", "GPTQ-Int4", "AWQ"]
    assert targets[0]["url"] == "http://127.0.0.1:8001" and targets[0]["backend"] == "vllm"
    assert targets[0]["model"] == "Qwen2-7B-Instruct" and targets[0]["model_id"] == "Qwen/Qwen2-7B-Instruct"
    with pytest.raises(ComposeError, match="no labelled service has profile 72b"):
        plan_turns(yaml.safe_load(good.read_text()), good, ["72b"], 60)
