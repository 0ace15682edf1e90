"""Every fetch from the Hugging Face Hub goes through :func:`fetch`, so that a machine without
the Hub (no network, a proxy, a gated repo) gets one line naming what could not be fetched and
the offline way, instead of a ``datasets``/``huggingface_hub`` traceback."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from orchestrator.errors import DataError
from orchestrator.run_meta import RunMeta

T = TypeVar("T")

OFFLINE_HINT = (
    "offline: --data-dir DIR (mmlu/{dev,test}, ceval/{dev,val}, ifeval/input_data.jsonl) "
    "and launch.model_path (local GGUF) in the manifest"
)


DATA_DIR_ENV = "ORCHESTRATOR_DATA_DIR"


def data_root(
    explicit: str | Path | None, run_meta: RunMeta | None = None, configured: Path | None = None
) -> Path | None:
    """Where benchmark data is read from, by one rule for every command: the command line's
    folder; else the one the run was made with (a resumed or re-scored run reads what it read);
    else the manifest's ``run.data_dir``; else ``$ORCHESTRATOR_DATA_DIR``; else None, the Hub."""
    if explicit:
        return Path(explicit).resolve()
    if run_meta is not None and run_meta.data_dir:
        return Path(run_meta.data_dir)
    if configured is not None:
        return configured
    env = os.environ.get(DATA_DIR_ENV)
    return Path(env).resolve() if env else None


class HubUnavailable(DataError):
    """Something the run needs could not be fetched from the Hub (a user's environment problem)."""


def _reason(exc: BaseException) -> str:
    """The innermost message: the libraries wrap a socket error in two or three layers."""
    seen: set[int] = set()
    while exc.__cause__ is not None and id(exc.__cause__) not in seen:
        seen.add(id(exc))
        exc = exc.__cause__
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {text[:300]}"


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The Hub libraries log every retry of a refused connection as a warning (a dozen lines on
    stderr before their own exception): the one line :func:`fetch` raises says it instead."""
    loggers = [logging.getLogger(name) for name in ("huggingface_hub", "datasets", "filelock", "fsspec")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def fetch(what: str, call: Callable[[], T]) -> T:
    """Run a Hub download; any failure becomes :class:`HubUnavailable` naming ``what``."""
    try:
        with _quiet():
            return call()
    except (KeyboardInterrupt, SystemExit, MemoryError):
        raise
    except Exception as exc:  # the Hub libraries raise dozens of types; all mean "not fetched"
        raise HubUnavailable(
            f"cannot fetch {what} from the Hugging Face Hub ({_reason(exc)}); {OFFLINE_HINT}"
        ) from None
