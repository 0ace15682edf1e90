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
import functools
import json
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, TypeVar

import orjson

from orchestrator.errors import DataError, StoreError, UserError
from orchestrator.records import RECORD_SCHEMA, Exchange, LoadRecord, SampleRecord, schema_of
from orchestrator.run_meta import RunMeta
from orchestrator.secrets import mask_secrets, redact

T = TypeVar("T")

SYNC_INTERVAL = 1.0  # seconds: bound on what a power loss can take


def atomic_write(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` all or nothing (the one atomic write of the project): a
    temporary file beside it, fsync, rename; on any failure the old file stays whole."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()  # no half-written copy left beside it
        raise


def json_document(data: Any) -> bytes:
    """A JSON file's bytes: indented, UTF-8 kept readable, a final newline."""
    return (json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n").encode("utf-8")


def jsonl_line(record: dict[str, Any]) -> bytes:
    """One record as a JSONL line (orjson: ~10x cheaper than json.dumps on the event loop)."""
    return orjson.dumps(record, option=orjson.OPT_NON_STR_KEYS) + b"\n"


def _atomic_write_json(path: Path, data: Any) -> None:
    atomic_write(path, json_document(data))


class SampleWriter:
    """Appends records to one JSONL file, each handed to the OS at once (unbuffered).

    fsync is not done here: the event loop that writes records must not wait on the disk. The
    runner calls :meth:`sync` from a thread every half SYNC_INTERVAL; :meth:`close` always syncs.
    A write that fails (full disk, quota) is cut back to the last whole record and raises
    :class:`StoreError`: the file never holds half a record, and what was on disk stays.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            _drop_partial_tail(path)
            # Unbuffered: a failed write leaves nothing in a Python buffer for close() to retry.
            self._file: IO[bytes] = open(path, "ab", buffering=0)  # noqa: SIM115 - closed in close()
        except OSError as exc:
            raise StoreError(f"cannot write {path}: {exc.strerror or exc}") from None
        self._dirty = False
        self.written = 0  # records written by this writer
        self._lock = threading.Lock()  # sync (a thread) against close (the loop)

    def write(self, record: Exchange | dict[str, Any]) -> None:
        """Append one record (typed, or a plain JSON object): one whole line, or nothing and a StoreError."""
        # orjson: ~10x cheaper than json.dumps on a record with a stream's stamps, on the loop thread.
        line = memoryview(jsonl_line(record.to_json() if isinstance(record, Exchange) else record))
        fd = self._file.fileno()
        start = os.lseek(fd, 0, os.SEEK_END)
        try:
            done = 0
            while done < len(line):
                done += os.write(fd, line[done:])
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, start)  # no torn line left behind
            raise StoreError(f"cannot write {self.path}: {exc.strerror or exc}") from None
        self._dirty = True
        self.written += 1

    def sync(self) -> None:
        """fsync what was written since the last sync (safe to call from another thread)."""
        with self._lock:
            if self._dirty and not self._file.closed:
                self._dirty = False  # before fsync: a record written meanwhile stays dirty
                try:
                    os.fsync(self._file.fileno())
                except OSError as exc:
                    raise StoreError(f"cannot sync {self.path}: {exc.strerror or exc}") from None

    def close(self) -> None:
        """Final fsync and close; closes even when the disk fails (then raises StoreError)."""
        with self._lock:
            if self._file.closed:
                return
            try:
                if self._dirty:
                    os.fsync(self._file.fileno())
            except OSError as exc:
                raise StoreError(f"cannot sync {self.path}: {exc.strerror or exc}") from None
            finally:
                with contextlib.suppress(OSError):
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


def _typed(path: Path, read: Callable[[], list[T]]) -> list[T]:
    """Records read back typed; a line that is JSON but not a record (edited by hand, another
    tool's file) is one line naming the file, not a traceback."""
    try:
        return read()
    except (KeyError, TypeError, AttributeError) as exc:
        raise DataError(f"{path}: a line is not a record of this run ({type(exc).__name__}: {exc})") from None


class NotARunError(UserError, RuntimeError):
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

    def read_meta(self) -> RunMeta | None:
        """run.json, typed (None for a new run)."""
        if not self.run_json.exists():
            return None
        try:
            data = json.loads(self.run_json.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise NotARunError(f"{self.run_json}: unreadable ({exc})") from None
        if not isinstance(data, dict):
            raise NotARunError(f"{self.run_json}: not a run.json (expected an object)")
        return RunMeta.from_json(data)

    def require_meta(self) -> RunMeta:
        """run.json of an existing run; NotARunError otherwise."""
        meta = self.read_meta()
        if meta is None:
            raise NotARunError(f"{self.root}: not a run directory (no run.json)")
        if schema_of(meta) > RECORD_SCHEMA:
            raise NotARunError(
                f"{self.root}: its records have schema {schema_of(meta)}; this orchestrator reads up to "
                f"{RECORD_SCHEMA} (upgrade it to read this run)"
            )
        return meta

    def write_meta(self, meta: RunMeta | dict[str, Any]) -> None:
        """Replace run.json atomically (the old one stays whole if the disk fails)."""
        data = meta.to_json() if isinstance(meta, RunMeta) else meta
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            _atomic_write_json(self.run_json, redact(data))
        except OSError as exc:
            raise StoreError(f"cannot write {self.run_json}: {exc.strerror or exc}") from None

    def check_writable(self) -> None:
        """Refuse a run directory that cannot take records, before anything is sent: create it,
        write and fsync a probe file the size of a few records, remove it."""
        probe = self.root / ".write-probe"
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            with open(probe, "wb") as f:
                f.write(b"\0" * 65536)
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            raise StoreError(f"cannot write into {self.root}: {exc.strerror or exc}") from None
        finally:
            with contextlib.suppress(OSError):
                probe.unlink()

    def completed_ids(self, target: str, task: str, setup: str) -> set[str]:
        """Samples with an answered record (errored samples are sent again on resume)."""
        return {sid for sid, r in latest_by_id(self.samples_path(target, task, setup)).items() if not r.get("error")}

    def records(self, target: str, task: str, setup: str) -> list[SampleRecord]:
        """The current record of every sample of a target x task."""
        path = self.samples_path(target, task, setup)
        return _typed(path, lambda: [SampleRecord.from_json(r) for r in latest_by_id(path).values()])

    def load_levels(self, target: str) -> list[list[LoadRecord]]:
        """The records of each load-test level of a target (load requests are never retried: every
        record is final), levels in file order, empty levels left out."""
        folder = self.root / "samples" / target
        paths = sorted(folder.glob("load-*.load.jsonl")) if folder.is_dir() else []

        def level(path: Path) -> list[LoadRecord]:
            return [LoadRecord.from_json(r) for r in read_records(path)]

        levels = [_typed(p, functools.partial(level, p)) for p in paths]
        return [lv for lv in levels if lv]

    def level_records(self, target: str, task: str, setup: str) -> list[LoadRecord]:
        """The records of one level's file (a speed-phase level: ``level_records(t, "speed-c64",
        "speed")``), in file order; none when it does not exist."""
        path = self.samples_path(target, task, setup)
        return _typed(path, lambda: [LoadRecord.from_json(r) for r in read_records(path)])

    def discard(self, target: str, task: str, setup: str) -> None:
        """Remove one records file (a level measured again from its start replaces what an
        interrupted session left of it)."""
        writer = self._writers.pop((target, task, setup), None)
        path = self.samples_path(target, task, setup)
        try:
            if writer is not None:
                writer.close()
            path.unlink(missing_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot remove {path}: {exc.strerror or exc}") from None

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
        """Close every writer with a final fsync; all are closed even if one fails (the first
        failure is raised after)."""
        failure: StoreError | None = None
        for w in self._writers.values():
            try:
                w.close()
            except StoreError as exc:
                failure = failure or exc
        self._writers.clear()
        if failure is not None:
            raise failure

    def write_json(self, name: str, data: Any) -> Path:
        """Write a JSON file into the run dir atomically."""
        path = self.root / name
        try:
            _atomic_write_json(path, redact(data))
        except OSError as exc:
            raise StoreError(f"cannot write {path}: {exc.strerror or exc}") from None
        return path

    def replace_records(self, target: str, task: str, setup: str, records: list[SampleRecord]) -> Path:
        """Rewrite one samples file whole (re-scoring): all or nothing, a crash leaves the old one."""
        path = self.samples_path(target, task, setup)
        try:
            atomic_write(path, b"".join(jsonl_line(r.to_json()) for r in records))
        except OSError as exc:
            raise StoreError(f"cannot write {path}: {exc.strerror or exc}") from None
        return path

    def append_server_log(self, target: str, text: str) -> Path:
        """Add a block (a Compose service's logs) to a server's log, masked of secrets."""
        path = self.server_log(target)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "a", encoding="utf-8") as f:
                f.write(mask_secrets(text))
        except OSError as exc:
            raise StoreError(f"cannot write {path}: {exc.strerror or exc}") from None
        return path

    def write_text(self, name: str, text: str) -> Path:
        """Write a text file (a report) into the run dir atomically, credentials masked."""
        return self.write_bytes(name, mask_secrets(text).encode("utf-8"))

    def write_bytes(self, name: str, data: bytes) -> Path:
        """Write a file (a figure) into the run dir atomically; a failure is a StoreError (exit 4)."""
        path = self.root / name
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            atomic_write(path, data)
        except OSError as exc:
            raise StoreError(f"cannot write {path}: {exc.strerror or exc}") from None
        return path
