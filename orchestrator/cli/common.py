"""What every command shares: the consoles, one-line errors, exit codes, the run's provenance
(versions, git SHA, time), where data and tokenizers are found, and command-line lists."""

from __future__ import annotations

import contextlib
import datetime as dt
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from orchestrator import __version__
from orchestrator.manifest import Manifest, TargetConfig
from orchestrator.run_meta import RunMeta
from orchestrator.secrets import redact

EXIT_BAD_INPUT = 2
EXIT_FAILED = 3
EXIT_INTERRUPTED = 130
DATA_DIR_ENV = "ORCHESTRATOR_DATA_DIR"  # hub.DATA_DIR_ENV, spelled here for --help without importing it

console = Console(stderr=True, soft_wrap=True, highlight=False)  # one line per message, even in a pipe


def error(text: str) -> None:
    """One line on stderr: ``error: ...``, credentials masked, never read as markup."""
    console.print(f"[red]error:[/] {escape(redact(text))}")


def out() -> Console:
    """Console for the tables: a pipe or file gets the full width instead of 80 columns."""
    out = Console()
    return out if out.is_terminal else Console(width=220)


def versions() -> dict[str, str]:
    """The versions of this tool, Python and the libraries a run's figures depend on (run.json)."""
    import importlib.metadata
    import platform

    out = {"orchestrator": __version__, "python": platform.python_version()}
    for dist in (
        "aiohttp",
        "tenacity",
        "rich",
        "datasets",
        "huggingface-hub",
        "tokenizers",
        "llama-cpp-python",
    ):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            out[dist] = importlib.metadata.version(dist)
    return out


def git_sha() -> str | None:
    """The checkout's commit, where this tool runs from one."""
    import subprocess

    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None


def now() -> str:
    """UTC, to the second (run.json's timestamps)."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def data_dir_of(manifest: Manifest, cli_value: str | None, run_meta: RunMeta | None = None) -> Path | None:
    """The data root of a command on a manifest (``hub.data_root``'s one rule)."""
    from orchestrator.hub import data_root

    configured = manifest.resolve_path(manifest.run.data_dir) if manifest.run.data_dir else None
    return data_root(cli_value, run_meta, configured)


def tokenizer_path(manifest: Manifest) -> Any:
    """target -> its local tokenizer folder, or None (a Hub id, or none given)."""

    def resolve(target: TargetConfig) -> Path | None:
        if target.tokenizer is None:
            return None
        p = manifest.resolve_path(target.tokenizer)
        return p if p.exists() else None  # otherwise a Hub id

    return resolve


def numbers(value: str, option: str, expected: str) -> list[float]:
    """Comma-separated numbers from the command line, or one line saying what was expected."""
    from orchestrator.loadtest import LoadConfigError

    try:
        return [float(x) for x in split(value)]
    except ValueError:
        raise LoadConfigError(f"{option}: expected comma-separated numbers ({expected}), got {value!r}") from None


def split(value: str | None) -> list[str]:
    """A comma-separated list, blanks dropped."""
    return [v.strip() for v in value.split(",") if v.strip()] if value else []
