"""Secrets audit: a bearer token and URL passwords never reach a file, stdout or stderr, and a
resumed run still authenticates (run.json keeps no credentials; they come back from the manifest
file and the environment)."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import BasicAuth, web

from orchestrator.manifest import ManifestError, parse_manifest
from orchestrator.secrets import redact, split_credentials
from orchestrator.store import read_records

REPO = Path(__file__).resolve().parents[1]
TOKEN = "tok-Zq9XcVb7KpW2"
PASSWORDS = {"alice": "pw-Hq3Lz8Rt", "bob": "pw-Vn5Kd2Mx", "carol": "pw-Jt7Yc4Ws"}
SECRETS = [TOKEN, *PASSWORDS.values()]


class AuthServer(threading.Thread):
    """Answers "B" to requests carrying a known credential (401 otherwise); while ``failing``, a
    500 for every other prompt, so that a later resume has samples to send."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.failing = True
        self.unauthorized = 0
        self.ok: dict[str, int] = {}
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.port = 0

    def _who(self, request: web.Request) -> str | None:
        header = request.headers.get("Authorization", "")
        if header == f"Bearer {TOKEN}":
            return "token"
        if header.startswith("Basic "):
            auth = BasicAuth.decode(header)
            if PASSWORDS.get(auth.login) == auth.password:
                return auth.login
        return None

    async def chat(self, request: web.Request) -> web.Response:
        body = await request.json()
        who = self._who(request)
        if who is None:
            self.unauthorized += 1
            return web.json_response({"error": "unauthorized"}, status=401)
        if self.failing and hash(str(body["messages"])) % 2:
            return web.json_response({"error": "scripted"}, status=500)
        self.ok[who] = self.ok.get(who, 0) + 1
        message = {"role": "assistant", "content": "B"}
        return web.json_response({"choices": [{"index": 0, "message": message, "finish_reason": "stop"}]})

    async def models(self, request: web.Request) -> web.Response:
        if self._who(request) is None:
            self.unauthorized += 1
            return web.json_response({"error": "unauthorized"}, status=401)
        return web.json_response({"object": "list", "data": [{"id": "m"}]})

    def run(self) -> None:
        asyncio.set_event_loop(self.loop)
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_get("/v1/models", self.models)
        runner = web.AppRunner(app)
        self.loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        self.loop.run_until_complete(site.start())
        self.port = runner.addresses[0][1]
        self.ready.set()
        self.loop.run_forever()


@pytest.fixture
def server() -> Iterator[AuthServer]:
    s = AuthServer()
    s.start()
    s.ready.wait(10)
    yield s
    s.loop.call_soon_threadsafe(s.loop.stop)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def bench(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "bench", *args, "--no-progress"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def assert_no_secret(run_dir: Path, *outputs: str) -> None:
    for text in outputs:
        for secret in SECRETS:
            assert secret not in text, secret
    for path in run_dir.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            for secret in SECRETS:
                assert secret.encode() not in data, (secret, path)


def test_no_secret_is_written_or_printed_and_resume_authenticates(
    tmp_path: Path, server: AuthServer, data_dir: Path
) -> None:
    port = server.port
    base = f"127.0.0.1:{port}"
    manifest = {
        "run": {"name": "secrets", "output_dir": str(tmp_path / "runs"), "data_dir": str(data_dir)},
        "tasks": {"mmlu": {"limit": 20, "shots": 0}},
        "generation": {"stream": False},
        "client": {"concurrency": 4, "retries": 0, "error_threshold": 1.0},
        "targets": [
            {"name": "one", "model": "M", "quantization": "BF16", "backend": "openai",
             "url": f"http://alice:{PASSWORDS['alice']}@{base}"},
            {"name": "replicas", "model": "M", "quantization": "Int8", "backend": "openai",
             "urls": [f"http://bob:{PASSWORDS['bob']}@{base}", f"http://bob:{PASSWORDS['bob']}@{base}/v1"]},
            {"name": "token", "model": "M", "quantization": "Int4", "backend": "openai", "url": f"http://{base}",
             "api_key_env": "ORCH_TEST_TOKEN"},
            {"name": "dead", "model": "M", "quantization": "AWQ", "backend": "openai",
             "url": f"http://carol:{PASSWORDS['carol']}@127.0.0.1:{_closed_port()}"},
        ],
    }  # fmt: skip
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(manifest))
    env = {**os.environ, "ORCH_TEST_TOKEN": TOKEN}
    first = bench(str(path), "--run-id", "r", env=env)
    assert first.returncode == 3, first.stderr  # the dead target failed
    run = tmp_path / "runs" / "r"
    assert_no_secret(run, first.stdout, first.stderr)
    assert server.unauthorized == 0
    failed = {t: sum(r["error"] is not None for r in read_records(run / "samples" / t / "mmlu.qwen@2.jsonl"))
              for t in ("one", "replicas", "token")}  # fmt: skip
    assert all(n > 0 for n in failed.values()), failed  # the resume below has work to do

    server.failing = False
    again = bench("--resume", str(run), env=env)
    assert_no_secret(run, again.stdout, again.stderr)
    assert server.unauthorized == 0  # every resumed request authenticated
    for t in ("one", "replicas", "token"):
        records = list(read_records(run / "samples" / t / "mmlu.qwen@2.jsonl"))
        latest = {r["id"]: r for r in records}
        assert len(latest) == 20 and all(r["error"] is None for r in latest.values()), t


def test_resume_without_the_manifest_says_how(tmp_path: Path, server: AuthServer, data_dir: Path) -> None:
    url = f"http://alice:{PASSWORDS['alice']}@127.0.0.1:{server.port}"
    manifest = {
        "run": {"name": "s", "output_dir": str(tmp_path / "runs"), "data_dir": str(data_dir)},
        "tasks": {"mmlu": {"limit": 6, "shots": 0}},
        "generation": {"stream": False},
        "client": {"retries": 0, "error_threshold": 1.0},
        "targets": [{"name": "one", "model": "M", "quantization": "BF16", "backend": "openai", "url": url}],
    }
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(manifest))
    assert bench(str(path), "--run-id", "r", env=dict(os.environ)).returncode == 0
    path.unlink()
    again = bench("--resume", str(tmp_path / "runs" / "r"), env=dict(os.environ))
    assert again.returncode == 2
    assert "run.json keeps no credentials" in again.stderr and "MANIFEST" in again.stderr
    assert PASSWORDS["alice"] not in again.stderr


def test_token_and_url_credentials_together_are_refused() -> None:
    data: dict[str, Any] = {
        "run": {"name": "x"},
        "tasks": {"mmlu": {}},
        "targets": [{"name": "t", "model": "M", "quantization": "BF16", "backend": "openai",
                     "url": "http://u:p@h:1", "api_key_env": "X"}],
    }  # fmt: skip
    with pytest.raises(ManifestError, match="not both"):
        parse_manifest(data)


def test_redact_and_split() -> None:
    assert redact({"a": ["see http://u:p@h:1/x and https://tok@h2/"], "b": 1}) == {
        "a": ["see http://***@h:1/x and https://***@h2/"],
        "b": 1,
    }
    assert split_credentials("http://u%40x:p%3Aw@h:8/v1") == ("http://h:8/v1", ("u@x", "p:w"))
    assert split_credentials("http://h:8") == ("http://h:8", None)
