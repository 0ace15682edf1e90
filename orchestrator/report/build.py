"""A bench run's report from the store only: every row's figures, each quantization against its
reference, the published tables set against them, and which method made each interval."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from orchestrator.footprint import Footprint, row_figures, shared_windows
from orchestrator.published import compare_published, load_references
from orchestrator.registry import TASKS
from orchestrator.report.model import Report, as_report
from orchestrator.run_meta import ServerFacts
from orchestrator.saturation import assess, core_share
from orchestrator.setups import run_setup_version, store_key
from orchestrator.stats import METHODS
from orchestrator.store import RunStore
from orchestrator.summary import SPEED_LATENCIES, summarize_run
from orchestrator.verdicts import compare


def build_report(run_dir: Path, reference: Path | None = None) -> dict[str, Any]:
    """Every figure of a run, computed from run.json and the sample records; ``reference``: a
    published table to set the measurements against (the shipped Qwen table by default)."""
    store = RunStore(run_dir)
    meta = store.require_meta()
    manifest = meta.manifest
    setup = manifest["run"]["setup"]
    version = run_setup_version(meta)
    task_names = list(manifest["tasks"])
    names = [t["name"] for t in manifest["targets"]]
    summaries = summarize_run(run_dir, names, task_names, setup, store_key(version), meta.samples)
    client = manifest.get("client") or {}
    rows = []
    sides = {}
    shared = shared_windows({name: (meta.server(name).footprint or Footprint()).energy for name in names})
    for t, summary in zip(manifest["targets"], summaries, strict=True):
        server = meta.server(t["name"])
        answered = sum(cost["answers"] for cost in summary.costs.values())
        correct = sum(cost["correct"] for cost in summary.costs.values())
        mine = {i: others for (name, i), others in shared.items() if name == t["name"]}
        sides.update({(t["name"], name): side for name, side in summary.sides.items()})
        rows.append(
            {
                "target": t["name"],
                # Why the target stopped early (its server died, the error budget ran out), if it did.
                "failure": meta.failures.get(t["name"]),
                "model": t["model"],
                "quantization": t["quantization"],
                "noise_of": t.get("noise_of"),
                "weights": t.get("weights"),
                "concurrency": t.get("concurrency"),
                "backend": t["backend"],
                "server_version": server.version,
                "served_model": server.served_model,
                "replicas": summary.replicas,
                # The report never hides records that were not sent: n counts what is on disk.
                "tasks": summary.tasks,
                "errors": sum(v["errors"] for v in summary.tasks.values()),
                # The accuracy pass's timings, with what that workload asked of the server.
                "speed": {**summary.speed, "workload": _eval_workload(t, server, manifest, client)},
                "saturation": _saturation(summary.speed, server),
                # The controlled speed phase (speedphase.py): the main table's speed columns.
                "speed_phase": _speed_phase(store, t["name"], server, meta.roofline_weights),
                "costs": summary.costs,
                # Size, memory and energy (footprint.py): what the checkpoint holds and draws.
                "footprint": row_figures(server.footprint, answered, correct, mine),
                **summary.average,
            }
        )
    # Each quantization against its reference.
    compared = compare(rows, sides)
    for row in rows:
        row.update(compared[row["target"]].fields())
    _bits_from_reference(rows)
    report = {
        "run_id": meta.run_id or run_dir.name,
        "setup": setup,
        "setup_version": version,
        "tasks": task_names,
        "rows": rows,
    }
    report["published"] = compare_published(report, load_references(reference), manifest["tasks"])
    report["intervals"] = interval_methods(report)
    return report


def interval_methods(report: dict[str, Any]) -> dict[str, Any]:
    """Which method made each kind of interval in this report (figure -> method), what each method
    is (stats.METHODS), and the headline figures' methods under short names (the terminal's line):
    every interval printed can be traced to how it was made."""
    figures: dict[str, str] = {}
    headline: dict[str, str] = {}  # the caption's subset: each task's headline, Average, Δ, KLD

    def add(figure: str, method: str, short: str | None) -> None:
        figures.setdefault(figure, method)
        if short is not None:
            headline.setdefault(short, method)

    for row in report["rows"]:
        for name, agg in row["tasks"].items():
            title = TASKS.get(name, name)
            for metric, method in (agg.get("interval_methods") or {}).items():
                main = metric == agg.get("headline")
                add(f"{title} {metric}{' (headline)' if main else ''}", method, title if main else None)
        if row.get("average") is not None:
            add("Average", row.get("average_interval_method", "mover"), "Average")
        cmp = row.get("comparison") or {}
        for name, p in (cmp.get("tasks") or {}).items():
            add(f"Δ {TASKS.get(name, name)}", p.get("interval_method", ""), f"Δ {TASKS.get(name, name)}")
            if (p.get("divergence") or {}).get("kl_prefix"):
                add("KLD mean", p["divergence"]["kl_prefix"].get("interval_method", "bootstrap"), "KLD mean")
        if cmp.get("average"):
            add("Δ Average", cmp["average"].get("interval_method", ""), "Δ Average")
    used = dict.fromkeys(figures.values())
    return {"figures": figures, "headline": headline, "methods": {m: METHODS[m] for m in used if m in METHODS}}


def _bits_from_reference(rows: list[dict[str, Any]]) -> None:
    """Bits per weight of packed checkpoints (GPTQ/AWQ int32 words count no parameters): their
    bytes over their reference row's parameters."""
    by_name = {row["target"]: row for row in rows}
    for row in rows:
        weights = (row.get("footprint") or {}).get("weights") or {}
        ref = by_name.get(row.get("reference") or "") or {}
        params = ((ref.get("footprint") or {}).get("weights") or {}).get("params")
        if weights.get("bytes") and weights.get("params") is None and params:
            weights["bits_per_weight"] = round(weights["bytes"] * 8 / params, 3)
            weights["source"] = f"{weights.get('source')}; parameters of {ref['target']}"


def _eval_workload(
    target: dict[str, Any], server: ServerFacts, manifest: dict[str, Any], client: dict[str, Any]
) -> dict[str, Any]:
    """What the accuracy pass asked of a server, beside its timings: top-k logprobs, requests in
    flight, and whether it is a noise-floor row (a reference's samples sent again)."""
    logprobs = server.extra.get("logprobs") or {}
    return {
        "logprobs": logprobs.get("got", 0),
        "concurrency": target.get("concurrency") or client.get("concurrency"),
        "noise_floor": bool((manifest.get("run") or {}).get("noise_floor")),
        "noise_of": target.get("noise_of"),
    }


def _speed_phase(
    store: RunStore, target: str, server: ServerFacts, weights: dict[str, Any] | None
) -> dict[str, Any] | None:
    """The target's speed phase reduced, and where the run gave a bandwidth (--gpu/--bandwidth-gbs)
    its batch-1 decode against that bound."""
    from orchestrator.roofline import roofline
    from orchestrator.speedphase import batch1_level, phase_figures

    phase = phase_figures(store, target, server.speed_phase, server.managed)
    if phase is None or not weights:
        return phase
    b1 = batch1_level(phase)
    size = (weights.get("weight_bytes") or {}).get(target)
    if b1 is not None and size:
        phase["roofline"] = roofline(size, weights["bandwidth_gbs"], weights.get("gpus") or 1, b1["tpot_p50_ms"])
    else:
        why = (weights.get("unsized") or {}).get(target) or "no batch-1 level"
        phase["roofline"] = {"fraction": None, "why": why}
    return phase


def _saturation(speed: dict[str, Any], server: ServerFacts) -> dict[str, Any] | None:
    """Who set the pace for this target (saturation.py), from its speed figures and run.json."""
    if not speed.get("requests"):
        return None
    client = server.client or {}
    return assess(
        lambda name: speed.get(SPEED_LATENCIES[name]),
        core_share(client.get("cpu_s"), client.get("wall_s")),
        speed.get("send_delay_p50_ms"),
        server.managed,
        server.metrics_before,
        server.metrics_after,
    )


def write_report(run_dir: Path, reference: Path | None = None) -> dict[str, Any]:
    """Compute the report and write report.json, report.md and report.html into the run dir,
    each through the store (atomic; a full disk is the store's one error)."""
    from orchestrator.report.document import build_document
    from orchestrator.report.html import render_html_document
    from orchestrator.report.markdown import render_markdown_document

    data = build_report(run_dir, reference)
    report = Report.from_json(data)
    doc = build_document(report)
    store = RunStore(run_dir)
    store.write_json("report.json", report.to_json())
    store.write_text("report.md", render_markdown_document(doc))
    store.write_text("report.html", render_html_document(doc, report))
    return data


def render_markdown(report: Report | dict[str, Any]) -> str:
    """report.md's text."""
    from orchestrator.report.document import build_document
    from orchestrator.report.markdown import render_markdown_document

    return render_markdown_document(build_document(as_report(report)))
