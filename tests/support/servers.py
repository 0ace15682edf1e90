"""Start real servers for the tests (vLLM in its own venv, or any command the test names), and
wait for them; the venvs of tools that live apart from the project's (vLLM, lm-eval)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def venv_python(variable: str, script: str) -> str:
    """A separate venv's interpreter: ``$variable`` (scripts/test.sh sets it), else installed by
    ``scripts/<script>`` (which prints it last)."""
    explicit = os.environ.get(variable)
    if explicit:
        return explicit
    done = subprocess.run(["bash", str(REPO / "scripts" / script)], check=True, capture_output=True, text=True)
    return done.stdout.strip().splitlines()[-1]


def vllm_python() -> str:
    """The vLLM venv's interpreter, installing it through scripts/setup_vllm.sh when missing."""
    return venv_python("ORCHESTRATOR_VLLM_PYTHON", "setup_vllm.sh")


@contextmanager
def started(cmd: Sequence[str], ready: str, log: Path, timeout: float = 120) -> Iterator[None]:
    """A server the test starts itself (not one the orchestrator manages), up once ``ready``
    answers 200, terminated on leaving."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(list(cmd), stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_http(ready, timeout, proc, log)
        yield
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def wait_http(url: str, timeout: float, proc: subprocess.Popen[bytes] | None = None, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:] if log else ""
            raise RuntimeError(f"server exited with {proc.returncode}:\n{tail}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} not up after {timeout} s")


class VLLMServer:
    """``python -m vllm.entrypoints.openai.api_server`` on the tiny HF model."""

    def __init__(self, model_dir: Path, log: Path, served_name: str = "tiny-qwen2") -> None:
        self.model_dir = model_dir
        self.log = log
        self.served_name = served_name
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 600.0) -> str:
        env = dict(os.environ)
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB: plenty for a 2-layer model
        env.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
        cmd = [
            vllm_python(),
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            str(self.model_dir),
            "--served-model-name",
            self.served_name,
            "--dtype",
            "float32",
            "--max-model-len",
            "32768",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--seed",
            "0",
        ]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            wait_http(f"{self.url}/v1/models", timeout, self.proc, self.log)
        except BaseException:
            self.stop()
            raise
        return self.url

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        # vLLM forks an engine core process: end the whole process group.
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


if __name__ == "__main__":  # manual use: python tests/support/servers.py MODEL_DIR
    server = VLLMServer(Path(sys.argv[1]), Path("vllm.log"))
    print(server.start())
    try:
        signal.pause()
    finally:
        server.stop()
