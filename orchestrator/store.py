"""Append-only JSONL per target x task x setup, one record per sample; resume by sample id.

Layout of a run directory::

    run.json                              manifest as loaded (secrets redacted), versions, sessions
    samples/<target>/<task>.<setup>.jsonl one record per sample attempt that ended (answered or error)
    servers/<target>.log                  managed servers' logs
    report.json, report.md                written by the report

A record is written only when a sample has ended; a sample in flight at a crash or Ctrl-C has no
record and is sent again on resume. The last record of a sample id wins.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import orjson

SYNC_INTERVAL = 1.0  # seconds: bound on what a power loss can take


def _atomic_write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, ensure_ascii=False, default=str)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class SampleWriter:
    """Appends records to one JSONL file, each flushed to the OS at once.

    fsync is not done here: the event loop that writes records must not wait on the disk. The
    runner calls :meth:`sync` from a thread every half SYNC_INTERVAL; :meth:`close` always syncs.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        _drop_partial_tail(path)
        self._file: IO[bytes] = open(path, "ab")  # noqa: SIM115 - closed in close()
        self._dirty = False
        self._lock = threading.Lock()  # sync (a thread) against close (the loop)

    def write(self, record: dict[str, Any]) -> None:
        """Append one record; one line, flushed to the OS at once."""
        # orjson: ~10x cheaper than json.dumps on a record with a stream's stamps, on the loop thread.
        self._file.write(orjson.dumps(record, option=orjson.OPT_NON_STR_KEYS) + b"\n")
        self._file.flush()
        self._dirty = True

    def sync(self) -> None:
        """fsync what was written since the last sync (safe to call from another thread)."""
        with self._lock:
            if self._dirty and not self._file.closed:
                self._dirty = False  # before fsync: a record written meanwhile stays dirty
                os.fsync(self._file.fileno())

    def close(self) -> None:
        """Final fsync and close."""
        with self._lock:
            if not self._file.closed:
                if self._dirty:
                    os.fsync(self._file.fileno())
                self._file.close()


def _drop_partial_tail(path: Path) -> None:
    """A kill -9 mid-write can leave a last line without newline: cut it before appending."""
    if not path.exists() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as f:
        f.seek(-1, os.SEEK_END)
        if f.read(1) == b"\n":
            return
        f.seek(0)
        content = f.read()
        cut = content.rfind(b"\n") + 1
        f.truncate(cut)


def read_records(path: Path) -> Iterator[dict[str, Any]]:
    """Every complete record of a JSONL file, in order; a torn last line is skipped."""
    if not path.exists():
        return
    with open(path, "rb") as f:
        for line in f:
            if not line.endswith(b"\n"):
                break  # torn write at a crash
            try:
                yield orjson.loads(line)
            except orjson.JSONDecodeError:
                # json.dumps wrote NaN/Infinity in older stores; orjson refuses them.
                with contextlib.suppress(ValueError):
                    yield json.loads(line)


def latest_by_id(path: Path) -> dict[str, dict[str, Any]]:
    """The last record of each sample id."""
    return {r["id"]: r for r in read_records(path)}


class NotARunError(RuntimeError):
    """A directory that holds no run (no run.json)."""


class RunStore:
    """One run directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._writers: dict[tuple[str, str, str], SampleWriter] = {}

    @property
    def run_json(self) -> Path:
        """Path of run.json."""
        return self.root / "run.json"

    def samples_path(self, target: str, task: str, setup: str) -> Path:
        """JSONL of one target x task x setup: switching setup never mixes results."""
        return self.root / "samples" / target / f"{task}.{setup}.jsonl"

    def server_log(self, target: str) -> Path:
        """Log file of a managed server."""
        return self.root / "servers" / f"{target}.log"

    def read_meta(self) -> dict[str, Any]:
        """run.json as a dict (empty for a new run)."""
        if not self.run_json.exists():
            return {}
        return dict(json.loads(self.run_json.read_text(encoding="utf-8")))

    def require_meta(self) -> dict[str, Any]:
        """run.json of an existing run; NotARunError otherwise."""
        meta = self.read_meta()
        if not meta:
            raise NotARunError(f"{self.root}: not a run directory (no run.json)")
        return meta

    def write_meta(self, meta: dict[str, Any]) -> None:
        """Replace run.json atomically."""
        self.root.mkdir(parents=True, exist_ok=True)
        _atomic_write_json(self.run_json, meta)

    def completed_ids(self, target: str, task: str, setup: str) -> set[str]:
        """Samples with an answered record (errored samples are sent again on resume)."""
        return {sid for sid, r in latest_by_id(self.samples_path(target, task, setup)).items() if not r.get("error")}

    def records(self, target: str, task: str, setup: str) -> list[dict[str, Any]]:
        """The current record of every sample of a target x task."""
        return list(latest_by_id(self.samples_path(target, task, setup)).values())

    def writer(self, target: str, task: str, setup: str) -> SampleWriter:
        """The (single) writer of a target x task x setup."""
        key = (target, task, setup)
        if key not in self._writers:
            self._writers[key] = SampleWriter(self.samples_path(target, task, setup))
        return self._writers[key]

    def sync(self) -> None:
        """fsync every writer with unsynced records (the runner calls this from a thread)."""
        for w in list(self._writers.values()):
            w.sync()

    def close(self) -> None:
        """Close every writer with a final fsync."""
        for w in self._writers.values():
            w.close()
        self._writers.clear()

    def write_json(self, name: str, data: Any) -> Path:
        """Write a JSON file into the run dir atomically."""
        path = self.root / name
        _atomic_write_json(path, data)
        return path
