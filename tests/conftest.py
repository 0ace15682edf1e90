"""Fixtures: the shared data, the tiny model, a real vLLM server (session-wide), and scripted
OpenAI-compatible servers (``fake_url``: start one per handler, closed after the test)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from tests.support import junit_schema, smollm2
from tests.support.fake_openai import FakeOpenAI, Handler
from tests.support.servers import VLLMServer
from tests.support.tiny_model import VERSION, build

REPO = Path(__file__).resolve().parents[1]


def shared_dir() -> Path:
    """``../shared`` beside the checkout, or $ORCHESTRATOR_SHARED."""
    return Path(os.environ.get("ORCHESTRATOR_SHARED", REPO.parent / "shared")).resolve()


def cache_dir() -> Path:
    return Path(os.environ.get("ORCHESTRATOR_CACHE", Path.home() / ".cache" / "orchestrator"))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    path = shared_dir() / "data"
    if not (path / "mmlu").is_dir():
        pytest.fail(f"shared data not found at {path} (set ORCHESTRATOR_SHARED)")
    return path


@pytest.fixture(scope="session")
def tiny_model(data_dir: Path) -> Path:
    """The tiny Qwen2 model: HF dir under hf/, GGUF f16/q8_0/q4_k_m beside it (cached by version)."""
    return build(cache_dir() / VERSION, data_dir)


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """SmolLM2-135M-Instruct (a real trained model, from PyPI): GGUF F16, Q8_0, Q4_K_M and the
    shipped Q4_1 (tests/support/smollm2.py; cached)."""
    return smollm2.build(cache_dir() / "smollm2-v1")


@pytest.fixture(scope="session")
def junit_xsd() -> Path:
    """The Jenkins JUnit schema (tests/support/junit_schema.py; cached)."""
    path = junit_schema.fetch(cache_dir() / "junit-xsd")
    if path is None:
        pytest.skip("npm is not installed: the JUnit schema comes from the npm registry")
    return path


@pytest.fixture(scope="session")
def vllm_url(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = VLLMServer(tiny_model / "hf", tmp_path_factory.mktemp("vllm") / "vllm.log")
    url = server.start()
    try:
        yield url
    finally:
        server.stop()


@pytest.fixture
async def fake_url() -> AsyncIterator[Any]:
    servers: list[TestServer] = []

    async def start(handler: Handler) -> tuple[str, FakeOpenAI]:
        fake = FakeOpenAI(handler)
        server = TestServer(fake.app(), host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        return str(server.make_url("")).rstrip("/"), fake

    yield start
    for s in servers:
        await s.close()
