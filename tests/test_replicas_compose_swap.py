"""Replicas (least outstanding first), targets discovered from Compose with health waiting, backend swap."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestServer

from orchestrator.manifest import ManifestError, parse_manifest, with_overrides
from orchestrator.report import build_report
from orchestrator.runner import Runner
from orchestrator.store import RunStore
from orchestrator.tasks import build_task
from tests.support.fake_openai import FakeOpenAI, answer_b

REPO = Path(__file__).resolve().parents[1]


async def start(handler: Any, healthy_in: float = 0.0) -> tuple[TestServer, FakeOpenAI]:
    fake = FakeOpenAI(handler, healthy_at=asyncio.get_running_loop().time() + healthy_in)
    server = TestServer(fake.app(), host="127.0.0.1")
    await server.start_server()
    return server, fake


def delayed(seconds: float) -> Any:
    async def handler(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        await asyncio.sleep(seconds)
        return await answer_b(request, body)

    return handler


async def test_replicas_least_outstanding_first(tmp_path: Path, data_dir: Path) -> None:
    (fast, fast_fake), (slow, slow_fake) = await start(delayed(0.01)), await start(delayed(0.3))
    try:
        urls = [str(fast.make_url("")).rstrip("/"), str(slow.make_url("")).rstrip("/")]
        m = parse_manifest(
            {
                "run": {"name": "r", "output_dir": str(tmp_path)},
                "tasks": {"ceval": {"limit": 80}},
                "client": {"concurrency": 4},
                "speed_phase": {"enabled": False},  # the replicas' shares of the accuracy pass are counted
                "targets": [{"name": "t", "model": "M", "quantization": "BF16", "backend": "openai", "urls": urls}],
            }
        )
        store = RunStore(tmp_path / "run")
        store.write_meta({"run_id": "run", "manifest": m.to_dict()})
        outcomes = await Runner(m, [build_task("ceval", data_dir, limit=80)], store).run()
        store.close()
    finally:
        await fast.close()
        await slow.close()
    assert outcomes[0].errors == 0 and outcomes[0].server["replicas"] == urls
    assert len(fast_fake.requests) + len(slow_fake.requests) == 80
    # The slow replica holds its requests 30x longer, so it is rarely the least busy one.
    assert len(fast_fake.requests) > 3 * len(slow_fake.requests) > 0
    counts = build_report(tmp_path / "run")["rows"][0]["replicas"]
    assert counts == {urls[0]: len(fast_fake.requests), urls[1]: len(slow_fake.requests)}


def test_manifest_url_or_urls() -> None:
    base = {"run": {"name": "r"}, "tasks": {"mmlu": {}}}
    t = {"name": "t", "model": "M", "quantization": "Q", "backend": "vllm"}
    with pytest.raises(ManifestError, match=r"targets\[0\]\.urls: expected either url or urls"):
        parse_manifest(base | {"targets": [t | {"url": "http://a:1", "urls": ["http://b:1"]}]})
    with pytest.raises(ManifestError, match=r"targets\[0\]\.urls\[1\]"):
        parse_manifest(base | {"targets": [t | {"urls": ["http://b:1", "nope"]}]})


def test_backend_swap_override() -> None:
    m = parse_manifest(
        {
            "run": {"name": "r"},
            "tasks": {"mmlu": {}},
            "targets": [{"name": "t", "model": "M", "quantization": "Q", "backend": "vllm", "url": "http://a:1"}],
        }
    )
    assert with_overrides(m, backend="tgi-chat").targets[0].backend == "tgi-chat"
    managed = parse_manifest(
        {
            "run": {"name": "r"},
            "tasks": {"mmlu": {}},
            "targets": [
                {"name": "t", "model": "M", "quantization": "Q", "backend": "llamacpp", "launch": {"model_path": "x"}}
            ],
        }
    )
    with pytest.raises(ManifestError, match="managed launch is only available"):
        with_overrides(managed, backend="vllm")


def compose_doc(ports: list[int]) -> dict[str, Any]:
    services = {}
    for i, (port, quant) in enumerate(zip(ports, ["BF16", "AWQ"], strict=False)):
        services[f"svc-{i}"] = {
            "image": "vllm/vllm-openai:v0.11.0",
            "ports": [f"{port}:8000"],
            "profiles": ["7b", "all"],
            "labels": {
                "orchestrator.model": "Qwen2-7B-Instruct",
                "orchestrator.model_id": "Qwen/Qwen2-7B-Instruct",
                "orchestrator.quantization": quant,
                "orchestrator.backend": "vllm",
            },
        }
    services["unrelated"] = {"image": "redis", "ports": ["6379:6379"]}
    return {"services": services}


async def run_cli(*args: str, cwd: Path) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "orchestrator.cli", *args, cwd=cwd,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 180)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_bench_from_compose_waits_for_health(tmp_path: Path, data_dir: Path) -> None:
    (a, fake_a), (b, fake_b) = await start(answer_b, healthy_in=1.5), await start(answer_b)
    try:
        ports = [a.port, b.port]
        compose = tmp_path / "c.yaml"
        compose.write_text(yaml.safe_dump(compose_doc([int(p) for p in ports if p])))
        code, out, err = await run_cli(
            "bench", "--compose", str(compose), "--running", "--profile", "7b", "--limit", "60",
            "--tasks", "mmlu,ceval", "--data-dir", str(data_dir), "--run-id", "c", "--no-progress", "--no-speed-phase",
            cwd=tmp_path,
        )  # fmt: skip
    finally:
        await a.close()
        await b.close()
    assert code == 0, err[-2000:]
    assert len(fake_a.requests) == len(fake_b.requests) == 120  # mmlu + ceval, 60 each
    meta = json.loads((tmp_path / "runs" / "c" / "run.json").read_text())
    assert [t["name"] for t in meta["manifest"]["targets"]] == ["svc-0", "svc-1"]  # no unlabelled service
    assert meta["manifest"]["client"]["targets_in_parallel"] is True
    assert "Qwen2-7B-Instruct" in out and "AWQ" in out


async def test_service_not_up_is_named(tmp_path: Path, data_dir: Path) -> None:
    a, _ = await start(answer_b, healthy_in=3600)
    try:
        compose = tmp_path / "c.yaml"
        compose.write_text(yaml.safe_dump(compose_doc([int(a.port or 0)])))
        code, _, err = await run_cli(
            "bench", "--compose", str(compose), "--running", "--health-timeout", "2", "--limit", "10",
            "--tasks", "ceval", "--data-dir", str(data_dir), "--run-id", "c", "--no-progress", cwd=tmp_path,
        )  # fmt: skip
    finally:
        await a.close()
    assert code == 3
    assert "service svc-0 at http://127.0.0.1:" in err and "not healthy after 2 s" in err and "HTTP 503" in err
