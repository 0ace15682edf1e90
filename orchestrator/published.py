"""Published figures as data, and the run's measurements set against them.

The package ships the Qwen docs' "Performance of Quantized Models" table (``data/qwen2_quantized.json``,
its source named in the file). A user's own reference file has the same shape: a title, a source,
and rows of ``model``, ``quantization`` and a percentage per column (``average`` and task names).
Rows match on model (its last path segment, case folded: ``Qwen/Qwen2-7B-Instruct`` is
``Qwen2-7B-Instruct``) and quantization (case folded). A published value is compared with the
measured one only where the task ran complete and unrestricted (no limit, no subject filter);
a subset says so instead of a number that would look like a reproduction.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from orchestrator.errors import UserError

DEFAULT_REFERENCE = Path(__file__).parent / "data" / "qwen2_quantized.json"


class ReferenceFileError(UserError, ValueError):
    """A reference file that cannot be read or does not have the expected shape."""


def load_reference(path: Path | None = None) -> dict[str, Any]:
    """A reference table (the shipped Qwen table by default), checked."""
    path = path or DEFAULT_REFERENCE
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
    data.setdefault("title", path.name)
    return dict(data)


def _key(model: str, quantization: str) -> tuple[str, str]:
    return (model.rstrip("/").rsplit("/", 1)[-1].casefold(), quantization.strip().casefold())


def compare_published(
    report: dict[str, Any], reference: dict[str, Any], task_configs: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """Published vs measured ± interval per matched row and column, with whether it lies inside."""
    published = {_key(r["model"], r["quantization"]): r for r in reference["rows"]}
    unrestricted = {name: cfg.get("limit") is None and not cfg.get("subjects") for name, cfg in task_configs.items()}
    rows = []
    for row in report["rows"]:
        ref = published.get(_key(row["model"], row["quantization"]))
        if ref is None:
            continue
        cells: dict[str, Any] = {}
        for name, agg in row["tasks"].items():
            if name not in ref:
                continue
            cells[name] = _cell(ref[name], agg["accuracy"], agg.get("interval"), unrestricted[name] and agg["complete"])
        if "average" in ref:
            # The published Average is over its own columns: comparable only over the same tasks.
            columns = set(ref) - {"model", "quantization", "average"}
            whole = all(unrestricted.values()) and row["average"] is not None and columns == set(row["tasks"])
            cells["average"] = _cell(ref["average"], row["average"], row.get("average_interval"), whole)
        rows.append({"target": row["target"], "model": row["model"], "quantization": row["quantization"], **cells})
    note = None
    if reference.get("setup") and report.get("setup") != reference["setup"]:
        note = f"the reference was measured under setup {reference['setup']}; this run used {report.get('setup')}"
    return {"title": reference["title"], "source": reference["source"], "note": note, "rows": rows}


def _cell(published: float, measured: float | None, ci: list[float] | None, comparable: bool) -> dict[str, Any]:
    if not comparable or measured is None:
        return {"published": published, "measured": None if measured is None else 100 * measured,
                "interval": None, "inside": None, "comparable": False, "note": "subset, not comparable"}  # fmt: skip
    interval = None if ci is None else [100 * ci[0], 100 * ci[1]]
    inside = None if interval is None else interval[0] <= published <= interval[1]
    return {"published": published, "measured": 100 * measured, "interval": interval, "inside": inside,
            "comparable": True, "note": None}  # fmt: skip


def cell_text(cell: dict[str, Any] | None) -> str:
    """One compared cell as text: published vs measured [interval], inside or outside it."""
    if cell is None:
        return ""
    measured = "–" if cell["measured"] is None else f"{cell['measured']:.1f}"
    if not cell["comparable"]:
        return f"{cell['published']:.1f} vs {measured} (subset, not comparable)"
    ci = cell["interval"]
    within = {True: "inside", False: "outside", None: ""}[cell["inside"]]
    span = f" [{ci[0]:.1f}, {ci[1]:.1f}]" if ci else ""
    return f"{cell['published']:.1f} vs {measured}{span} {within}".strip()


__all__ = ["DEFAULT_REFERENCE", "ReferenceFileError", "cell_text", "compare_published", "load_reference"]
