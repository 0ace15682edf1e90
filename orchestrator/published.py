"""Published figures as data, and the run's measurements set against them.

The package ships published tables as data, each with its source named in the file: the Qwen
docs' "Performance of Quantized Models" (``data/qwen2_quantized.json``) and the SmolLM2-135M-Instruct
model card's IFEval figure (``data/smollm2_instruct.json``). A user's own reference file has the
same shape: a title, a source, and rows of ``model``, ``quantization`` and a percentage per column
(``average`` and task names); ``metrics`` may name, per column, the figure it publishes when that is
not the task's headline (``prompt_inst_average``: IFEval's prompt- and instruction-level strict
accuracies averaged). Rows match on model (its last path segment, case folded:
``Qwen/Qwen2-7B-Instruct`` is ``Qwen2-7B-Instruct``) and quantization (case folded); a measured
full-precision row (BF16/FP16/F16/FP32/F32) matches the model's published full-precision row. A
published value is compared with the measured one only where the task ran complete and
unrestricted (no limit, no subject filter) and the row's weights are the published checkpoint's
(a target with ``weights:``, e.g. "F16 dequantized from Q4_1", is shown beside it and labelled not
comparable); otherwise the cell says why instead of a number that would look like a reproduction.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from orchestrator.errors import UserError
from orchestrator.registry import REFERENCE_QUANTS, TASKS

DATA = Path(__file__).parent / "data"
DEFAULT_REFERENCES = (DATA / "qwen2_quantized.json", DATA / "smollm2_instruct.json")


class ReferenceFileError(UserError, ValueError):
    """A reference file that cannot be read or does not have the expected shape."""


def load_references(path: Path | None = None) -> list[dict[str, Any]]:
    """The reference tables: ``path`` alone, or every shipped one."""
    return [load_reference(p) for p in ((path,) if path is not None else DEFAULT_REFERENCES)]


def load_reference(path: Path) -> dict[str, Any]:
    """One reference table, checked."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ReferenceFileError(f"{path}: cannot read the reference table ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("rows"), list) or not data.get("source"):
        raise ReferenceFileError(f"{path}: expected an object with title, source and rows")
    for i, row in enumerate(data["rows"]):
        if (
            not isinstance(row, dict)
            or not isinstance(row.get("model"), str)
            or not isinstance(row.get("quantization"), str)
        ):
            raise ReferenceFileError(f"{path}: rows[{i}]: expected model and quantization strings")
        for key, value in row.items():
            if key not in ("model", "quantization") and not isinstance(value, int | float):
                raise ReferenceFileError(f"{path}: rows[{i}].{key}: expected a percentage, got {value!r}")
    for column, metric in (data.get("metrics") or {}).items():
        if metric not in METRICS:
            raise ReferenceFileError(f"{path}: metrics.{column}: expected one of {', '.join(METRICS)}, got {metric!r}")
    data.setdefault("title", path.name)
    return dict(data)


def _headline(agg: dict[str, Any]) -> tuple[float | None, list[float] | None]:
    return agg.get("accuracy"), agg.get("interval")


def _prompt_inst_average(agg: dict[str, Any]) -> tuple[float | None, list[float] | None]:
    """IFEval's prompt- and instruction-level strict accuracies averaged; its interval the average
    of theirs (valid whatever their correlation: the sd of a mean is at most the mean of the sds)."""
    a, b = agg.get("prompt_strict"), agg.get("instruction_strict")
    if a is None or b is None:
        return None, None
    intervals = agg.get("intervals") or {}
    ca, cb = intervals.get("prompt_strict"), intervals.get("inst_strict")
    ci = None if ca is None or cb is None else [(ca[0] + cb[0]) / 2, (ca[1] + cb[1]) / 2]
    return (a + b) / 2, ci


# What a published column can be, besides a task's headline (a reference file's ``metrics``).
METRICS = {"accuracy": _headline, "prompt_inst_average": _prompt_inst_average}


def _key(model: str, quantization: str) -> tuple[str, str]:
    return (model.rstrip("/").rsplit("/", 1)[-1].casefold(), quantization.strip().casefold())


def _published_row(row: dict[str, Any], published: dict[tuple[str, str], dict[str, Any]]) -> dict[str, Any] | None:
    """The published row a measured row stands beside: the same model and quantization, or for a
    full-precision row the model's published full-precision one."""
    exact = published.get(_key(row["model"], row["quantization"]))
    if exact is not None or row["quantization"].upper() not in REFERENCE_QUANTS:
        return exact
    model = _key(row["model"], "")[0]
    return next((p for (m, q), p in published.items() if m == model and q.upper() in REFERENCE_QUANTS), None)


def compare_published(
    report: dict[str, Any], references: list[dict[str, Any]], task_configs: dict[str, dict[str, Any]]
) -> list[dict[str, Any]]:
    """Per reference table with a matching row: published vs measured ± interval per matched row
    and column, with whether it lies inside (or why it is not comparable)."""
    unrestricted = {name: cfg.get("limit") is None and not cfg.get("subjects") for name, cfg in task_configs.items()}
    tables = []
    for reference in references:
        published = {_key(r["model"], r["quantization"]): r for r in reference["rows"]}
        metrics = reference.get("metrics") or {}
        rows = []
        for row in report["rows"]:
            if row.get("noise_of"):
                continue
            ref = _published_row(row, published)
            if ref is None:
                continue
            # Why no published figure can be compared with this row, whatever the column.
            weights = f"weights {row['weights']}, not the published checkpoint's" if row.get("weights") else None
            precision = None
            if ref["quantization"].casefold() != row["quantization"].casefold():
                precision = f"published {ref['quantization']}, measured {row['quantization']}"
            cells: dict[str, Any] = {}
            for name, agg in row["tasks"].items():
                if name not in ref:
                    continue
                measured, ci = METRICS[metrics.get(name, "accuracy")](agg)
                why = weights or (None if unrestricted[name] and agg["complete"] else "subset")
                cells[name] = _cell(ref[name], measured, ci, why, precision)
            if "average" in ref:
                # The published Average is over its own columns: comparable only over the same tasks.
                columns = set(ref) - {"model", "quantization", "average"}
                whole = all(unrestricted.values()) and row["average"] is not None and columns == set(row["tasks"])
                why = weights or (None if whole else "subset")
                cells["average"] = _cell(ref["average"], row["average"], row.get("average_interval"), why, precision)
            rows.append({"target": row["target"], "model": row["model"], "quantization": row["quantization"], **cells})
        if not rows:
            continue
        note = None
        if reference.get("setup") and report.get("setup") != reference["setup"]:
            note = f"the reference was measured under setup {reference['setup']}; this run used {report.get('setup')}"
        tables.append({"title": reference["title"], "source": reference["source"], "note": note,
                       "columns": reference.get("columns") or {}, "rows": rows})  # fmt: skip
    return tables


def _cell(
    published: float, measured: float | None, ci: list[float] | None, why: str | None, precision: str | None
) -> dict[str, Any]:
    if why is not None or measured is None:
        note = f"{why or 'not measured'}, not comparable"
        return {"published": published, "measured": None if measured is None else 100 * measured,
                "interval": None, "inside": None, "comparable": False, "note": note}  # fmt: skip
    interval = None if ci is None else [100 * ci[0], 100 * ci[1]]
    inside = None if interval is None else interval[0] <= published <= interval[1]
    return {"published": published, "measured": 100 * measured, "interval": interval, "inside": inside,
            "comparable": True, "note": precision}  # fmt: skip


def published_columns(tasks: list[str], pub: dict[str, Any]) -> list[tuple[str, str]]:
    """(key, title) of the columns a compared published table has for a run of ``tasks``: the
    Average, then the tasks, each under the table's own title for it where it gives one."""
    names = pub.get("columns") or {}
    keys = [c for c in ("average", *tasks) if any(c in row for row in pub["rows"])]
    return [(c, names.get(c) or ("Average" if c == "average" else TASKS.get(c, c))) for c in keys]


def cell_text(cell: dict[str, Any] | None) -> str:
    """One compared cell as text: published vs measured [interval], inside or outside it."""
    if cell is None:
        return ""
    measured = "–" if cell["measured"] is None else f"{cell['measured']:.1f}"
    if not cell["comparable"]:
        return f"{cell['published']:.1f} vs {measured} ({cell['note']})"
    ci = cell["interval"]
    within = {True: "inside", False: "outside", None: ""}[cell["inside"]]
    span = f" [{ci[0]:.1f}, {ci[1]:.1f}]" if ci else ""
    note = f" ({cell['note']})" if cell.get("note") else ""
    return f"{cell['published']:.1f} vs {measured}{span} {within}{note}".strip()


__all__ = [
    "DEFAULT_REFERENCES",
    "METRICS",
    "ReferenceFileError",
    "cell_text",
    "compare_published",
    "load_reference",
    "load_references",
    "published_columns",
]
