"""run.json through the store only, typed: read, changed and written back without losing a key."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from orchestrator.run_meta import RunMeta, ServerFacts
from orchestrator.store import RunStore
from tests.support.stored_runs import RUNS


def test_run_json_reads_typed_and_writes_back_byte_for_byte(tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(RUNS / "matrix" / "run", run)
    before = (run / "run.json").read_bytes()
    store = RunStore(run)
    meta = store.require_meta()
    assert (
        isinstance(meta, RunMeta)
        and meta.run_id == "matrix"
        and meta.samples == {"mmlu": 24, "ceval": 24, "ifeval": 20}
    )
    assert isinstance(meta.servers["bf16"], ServerFacts) and meta.server("bf16").version == "0.6.3"
    assert meta.server("nobody") == ServerFacts()
    store.write_meta(meta)
    assert (run / "run.json").read_bytes() == before


def test_what_a_session_adds_is_kept_after_what_was_read(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "run")
    store.write_meta({"run_id": "r", "manifest": {"run": {"setup": "qwen"}}, "a_newer_key": {"x": 1}})
    meta = store.require_meta()
    meta.failures["t0"] = "t0: server died"
    meta.servers["t0"] = ServerFacts.from_json({"backend": "vllm", "props": {"slots": 4}})
    meta.sessions.append({"status": "done"})
    store.write_meta(meta)
    data = json.loads(store.run_json.read_text())
    assert list(data)[:3] == ["run_id", "manifest", "a_newer_key"] and data["a_newer_key"] == {"x": 1}
    assert data["failures"] == {"t0": "t0: server died"} and data["sessions"] == [{"status": "done"}]
    assert data["servers"]["t0"] == {"backend": "vllm", "props": {"slots": 4}}
    assert "roofline" not in data  # a field left at its default is not written into a run.json that lacked it
    assert RunStore(tmp_path / "nothing").read_meta() is None
