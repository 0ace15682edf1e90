"""Runs written straight into a store, with known outcomes: for the tests of the report's
statistics, divergence and page (no server, no scoring)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from orchestrator.manifest import SpeedPhaseConfig, parse_manifest
from orchestrator.records import RECORD_SCHEMA, LoadRecord, SampleRecord, Timing
from orchestrator.speedphase import SETUP, level_file, level_profiles
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


def write_speed_phase(run: Path, target: str, tpot_ms: float, concurrency: int = 4, tokens: int = 16) -> None:
    """A target's speed phase with known figures: every request of each level (run's concurrency,
    then batch 1) takes TTFT 50 ms and ``tpot_ms`` per token after the first, a closed loop with
    ``concurrency`` requests in flight back to back; run.json says the phase was measured."""
    store = RunStore(run)
    config = SpeedPhaseConfig(requests=8, batch1_requests=4, warmup=1, output_tokens=tokens)
    levels = []
    for level, profile in level_profiles(config, concurrency):
        e2e = 0.05 + (tokens - 1) * tpot_ms / 1000.0
        n = profile.warmup + profile.requests + level
        writer = store.writer(target, level_file(level), SETUP)
        for i in range(n):
            t = Timing(wall_send=1000.0 + (i // level) * e2e, e2e=e2e, ttft=0.05)
            writer.write(
                LoadRecord(
                    index=i, mode="concurrency", level=level, warmup=i < profile.warmup,
                    cooldown=i >= profile.warmup + profile.requests, timing=t, completion_tokens=tokens,
                    prompt_tokens=32, prompt_digest=f"p{i}", request={"max_tokens": tokens},
                )
            )  # fmt: skip
        levels.append({"concurrency": level, "file": level_file(level), "profile": profile.to_dict()})
    store.close()
    meta = store.require_meta()
    facts = meta.server(target).to_json()
    facts["speed_phase"] = {"status": "done", "prompts": "synthetic", "input_tokens": 32, "output_tokens": tokens,
                            "ignore_eos": True, "levels": levels, "notes": []}  # fmt: skip
    from orchestrator.run_meta import ServerFacts

    meta.servers[target] = ServerFacts.from_json(facts)
    store.write_meta(meta)


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
