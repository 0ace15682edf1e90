"""Runs written straight into a store, with known outcomes: for the tests of the report's
statistics, divergence and page (no server, no scoring)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from orchestrator.manifest import parse_manifest
from orchestrator.records import RECORD_SCHEMA, SampleRecord
from orchestrator.store import RunStore

N = 200


def target(name: str, model: str, quant: str) -> dict[str, Any]:
    return {"name": name, "model": model, "quantization": quant, "backend": "openai", "url": "http://h:1"}


def write_outcomes(store: RunStore, target: str, task: str, rights: list[bool | None], subjects: int = 4) -> None:
    writer = store.writer(target, task, "qwen@2")
    for i, right in enumerate(rights):
        common = {"id": f"{task}/{i}", "task": task, "subject": f"s{i % subjects}", "target": target, "gold": "A"}
        if right is None:
            writer.write(SampleRecord(**common, error="HTTP 500", error_type="http", attempts=1))
        else:
            answer = "A" if right else "B"
            writer.write(SampleRecord(**common, reply=answer, extracted=answer, rule="r", correct=right, attempts=1))


def bench_run(tmp_path: Path, targets: list[dict[str, Any]], samples: dict[str, int]) -> Path:
    manifest = parse_manifest(
        {"run": {"name": "r", "output_dir": str(tmp_path)}, "tasks": {t: {} for t in samples}, "targets": targets}
    )
    run = tmp_path / "r"
    RunStore(run).write_meta(
        {"run_id": "r", "manifest": manifest.to_dict(), "setup": {"name": "qwen", "version": "qwen@2"},
         "samples": samples, "record_schema": RECORD_SCHEMA}
    )  # fmt: skip
    return run


def logsoftmax(x: np.ndarray) -> np.ndarray:
    return x - (np.log(np.sum(np.exp(x - x.max()))) + x.max())


def positions(tokens: list[str], tops: list[dict[str, float]]) -> list[list[Any]]:
    return [[t, top[t], [[a, lp] for a, lp in top.items()]] for t, top in zip(tokens, tops, strict=True)]


def kl_record(target: str, i: int, right: bool, positions: list[list[Any]]) -> SampleRecord:
    letter = positions[0][0]
    return SampleRecord(
        id=f"mmlu/{i}", task="mmlu", subject=f"s{i % 3}", target=target, gold="A", reply=letter, extracted=letter,
        rule="r", correct=right, attempts=1, logprobs=positions,
    )  # fmt: skip


def kl_run(tmp_path: Path, shift: dict[str, float]) -> Path:
    targets = [
        {"name": name, "model": "M", "quantization": quant, "backend": "openai", "url": "http://h:1"}
        for name, quant in (("f16", "F16"), ("q8", "Q8_0"), ("q4", "Q4_K_M"))
    ]
    manifest = parse_manifest({"run": {"name": "r", "output_dir": str(tmp_path)}, "tasks": {"mmlu": {}},
                               "targets": targets, "generation": {"logprobs": 4}})  # fmt: skip
    run = tmp_path / "r"
    store = RunStore(run)
    store.write_meta({"run_id": "r", "manifest": manifest.to_dict(), "setup": {"name": "qwen", "version": "qwen@2"},
                      "samples": {"mmlu": 60}, "record_schema": RECORD_SCHEMA})  # fmt: skip
    rng = np.random.default_rng(0)
    for i in range(60):
        logits = rng.normal(0, 2, 4)
        for name in ("f16", "q8", "q4"):
            noisy = logsoftmax(logits + rng.normal(0, shift[name], 4))
            top = {letter: float(v) for letter, v in zip("ABCD", noisy, strict=True)}
            best = max(top, key=top.__getitem__)
            store.writer(name, "mmlu", "qwen@2").write(kl_record(name, i, best == "A", positions([best], [top])))
    store.close()
    return run
