"""Scoring without a server: re-score a run's stored replies, or score a file of responses.

``rescore_run`` applies the current scorers to every stored reply (the data is re-read and each
record's prompt digest is checked, so a changed dataset is refused, never silently re-scored).
``score_responses`` takes IFEval responses in the official ``input_response_data`` format
({prompt, response} per line) and writes verdicts in the official ``eval_results`` format, so our
verdicts can be compared with other tools', item by item.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from orchestrator.errors import UserError
from orchestrator.hub import data_root
from orchestrator.manifest import parse_manifest
from orchestrator.records import SampleRecord
from orchestrator.setups import SETUP_VERSIONS, run_setup_version, store_key
from orchestrator.store import RunStore, atomic_write, read_records
from orchestrator.tasks import IFEvalTask, Sample, manifest_tasks
from orchestrator.tasks.base import DataError
from orchestrator.tasks.ifeval import aggregate_verdicts


class RescoreError(UserError, RuntimeError):
    """Stored records that cannot be re-scored (one line for the user)."""


def rescore_run(run_dir: Path, data_dir: str | Path | None = None) -> dict[str, int]:
    """Re-score every answered record of a run in place; returns records re-scored per task."""
    store = RunStore(run_dir)
    meta = store.require_meta()
    manifest = meta.manifest
    setup = manifest["run"]["setup"]
    version = run_setup_version(meta)
    if version != SETUP_VERSIONS.get(setup):
        raise RescoreError(
            f"{run_dir}: made with setup {version}; this orchestrator scores {SETUP_VERSIONS.get(setup)}, "
            "whose prompts differ: its report stands as it is (orchestrate report)"
        )
    root = data_root(data_dir, meta)  # the command line's, else the run's own (hub.data_root)
    counts: dict[str, int] = {}
    # Every sample of each task (no limit), so any stored id can be found.
    for task in manifest_tasks(parse_manifest(manifest, str(store.run_json)), root, every_sample=True):
        name = task.name
        samples: dict[str, Sample] = {s.id: s for s in task.samples()}
        counts[name] = 0
        for target in manifest["targets"]:
            path = store.samples_path(target["name"], name, store_key(version))
            if not path.exists():
                continue
            # Every record, superseded ones too: the file is rewritten as it was, re-scored.
            records = [SampleRecord.from_json(r) for r in read_records(path)]
            for r in records:
                if not r.answered or r.reply is None:
                    continue
                sample = samples.get(r.id)
                if sample is None or sample.prompt_digest() != r.prompt_digest:
                    raise RescoreError(
                        f"{path}: sample {r.id} does not match the data any more (prompt digest differs)"
                    )
                score = task.score(sample, r.reply)
                r.extracted, r.rule, r.correct = score.extracted, score.rule, score.correct
                r.score_details = score.details
                counts[name] += 1
            store.replace_records(target["name"], name, store_key(version), records)  # a crash leaves the old file
    return counts


def score_responses(responses: Path, data_dir: Path | None, output_dir: Path) -> dict[str, Any]:
    """Score an official-format IFEval responses file; write eval_results_{strict,loose}.jsonl."""
    try:
        lines = [json.loads(line) for line in responses.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, ValueError) as exc:
        raise RescoreError(f"{responses}: cannot read JSONL ({exc})") from None
    task = IFEvalTask(data_dir)
    by_prompt = {row["prompt"]: row for row in task.rows().values()}
    strict_out: list[dict[str, Any]] = []
    loose_out: list[dict[str, Any]] = []
    items: list[tuple[list[str], list[bool], list[bool]]] = []
    for i, item in enumerate(lines):
        if not isinstance(item, dict) or "prompt" not in item or "response" not in item:
            raise RescoreError(f"{responses}: line {i + 1}: expected an object with prompt and response")
        row = by_prompt.get(item["prompt"])
        if row is None:
            raise RescoreError(f"{responses}: line {i + 1}: prompt is not an IFEval prompt")
        details = task.score_response(row, item["response"]).details
        items.append((details["instruction_id_list"], details["strict"], details["loose"]))
        for mode, out in (("strict", strict_out), ("loose", loose_out)):
            out.append(
                {
                    "key": row["key"],
                    "instruction_id_list": details["instruction_id_list"],
                    "prompt": row["prompt"],
                    "response": item["response"],
                    "follow_all_instructions": all(details[mode]),
                    "follow_instruction_list": details[mode],
                }
            )
    metrics = aggregate_verdicts(items)
    output_dir.mkdir(parents=True, exist_ok=True)
    for mode, out in (("strict", strict_out), ("loose", loose_out)):
        # The official loop's own line format (json.dumps' separators), so files compare as text.
        text = "".join(json.dumps(entry, ensure_ascii=False) + "\n" for entry in out)
        atomic_write(output_dir / f"eval_results_{mode}.jsonl", text.encode("utf-8"))
    metrics["n"] = len(items)
    return metrics


__all__ = ["DataError", "RescoreError", "rescore_run", "score_responses"]
