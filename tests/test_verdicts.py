"""The report's statistics from the store: intervals, paired comparisons, flips, verdicts, completeness."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest
from scipy.stats import binomtest

from orchestrator.manifest import parse_manifest
from orchestrator.records import SampleRecord
from orchestrator.report import build_report, render_markdown, write_report
from orchestrator.store import RunStore
from tests.support.synthetic import N
from tests.support.synthetic import bench_run as _run
from tests.support.synthetic import target as _target
from tests.support.synthetic import write_outcomes as _write


def test_a_quantization_against_its_reference(tmp_path: Path) -> None:
    run = _run(
        tmp_path,
        [_target("bf16", "M", "BF16"), _target("int4", "M", "GPTQ-Int4"), _target("lone", "L", "Q8_0")],
        {"mmlu": N, "ceval": N},
    )
    store = RunStore(run)
    ref = [i % 3 != 0 for i in range(N)]  # 133 right
    # The quantized side loses 30 answers the reference had right and gains 5.
    lost = [i for i in range(N) if ref[i]][:30]
    gained = [i for i in range(N) if not ref[i]][:5]
    quant = [(r and i not in lost) or i in gained for i, r in enumerate(ref)]
    for task in ("mmlu", "ceval"):
        _write(store, "bf16", task, ref)
        _write(store, "int4", task, quant)
        _write(store, "lone", task, ref)
    store.close()
    report = build_report(run)
    rows = {r["target"]: r for r in report["rows"]}
    cmp = rows["int4"]["comparison"]["tasks"]["mmlu"]
    assert (cmp["n"], cmp["right_to_wrong"], cmp["wrong_to_right"]) == (N, 30, 5)
    assert cmp["delta"] == pytest.approx(-25 / N)
    assert cmp["p_value"] == pytest.approx(binomtest(5, 35, 0.5).pvalue)
    assert cmp["changed_rate"] == pytest.approx(35 / N)  # every flip changed the extracted letter
    assert cmp["recovery"] == pytest.approx(sum(quant) / sum(ref))
    assert cmp["interval"][0] < cmp["delta"] < cmp["interval"][1] < 0
    assert cmp["verdict"] == "loss" and cmp["p_holm"] >= cmp["p_value"]
    average = rows["int4"]["comparison"]["average"]
    assert average["delta"] == pytest.approx(-25 / N) and average["tasks"] == ["mmlu", "ceval"]
    assert average["verdict"] == "loss"
    # Every accuracy has its interval; the reference row has no comparison of its own.
    acc = rows["bf16"]["tasks"]["mmlu"]
    assert acc["interval"][0] < acc["accuracy"] < acc["interval"][1]
    assert rows["bf16"]["average_interval"][0] < rows["bf16"]["average"] < rows["bf16"]["average_interval"][1]
    assert rows["bf16"]["comparison"] is None and rows["int4"]["reference"] == "bf16"
    assert "no reference row" in rows["lone"]["comparison_note"]
    md = render_markdown(report)
    assert "What each quantization costs" in md and "| int4 | bf16 | mmlu | 200 |" in md
    assert "no reference row" in md
    # Seeded: the same run, the same report, byte for byte.
    write_report(run)
    first = (run / "report.json").read_bytes()
    write_report(run)
    assert (run / "report.json").read_bytes() == first


def test_no_average_over_unlike_things(tmp_path: Path) -> None:
    """A target that stopped after one task gets no Average (and says why), and its Δ Average
    is taken only over the tasks both rows have complete."""
    run = _run(tmp_path, [_target("bf16", "M", "BF16"), _target("q4", "M", "Q4_K_M")], {"mmlu": N, "ceval": N})
    store = RunStore(run)
    _write(store, "bf16", "mmlu", [True] * N)
    _write(store, "bf16", "ceval", [i % 2 == 0 for i in range(N)])
    _write(store, "q4", "mmlu", [True] * N)
    _write(store, "q4", "ceval", [True] * 10)  # interrupted: 10 of 200 sent
    store.close()
    rows = {r["target"]: r for r in build_report(run)["rows"]}
    assert rows["q4"]["average"] is None and "ceval (10/200 sent)" in rows["q4"]["average_missing"]
    average = rows["q4"]["comparison"]["average"]
    assert average["tasks"] == ["mmlu"] and average["delta"] == 0.0
    # No flip in 200 samples: not a change, but not proof of none within a point either.
    assert average["interval"][0] < 0 < average["interval"][1]
    # The Average of the one complete task is that task's comparison, not a MOVER of one part.
    mmlu = rows["q4"]["comparison"]["tasks"]["mmlu"]
    assert {k: average[k] for k in mmlu} == mmlu and average["interval_method"] == "bonett-price"
    assert average["verdict"].startswith("inconclusive — n too small: with 200 samples")
    # The ceval comparison still pairs the 10 samples both answered, and counts the rest.
    ceval = rows["q4"]["comparison"]["tasks"]["ceval"]
    assert (ceval["n"], ceval["only_reference"], ceval["only_quantized"]) == (10, N - 10, 0)
    assert ceval["verdict"].startswith("inconclusive — n too small: with 10 samples")


def test_errors_are_unpaired_and_a_failed_target_says_so(tmp_path: Path) -> None:
    run = _run(tmp_path, [_target("bf16", "M", "BF16"), _target("q8", "M", "Q8_0")], {"mmlu": 20})
    store = RunStore(run)
    _write(store, "bf16", "mmlu", [True] * 20)
    _write(store, "q8", "mmlu", [None] * 5 + [True] * 15)  # five error records
    store.close()
    meta = json.loads((run / "run.json").read_text())
    meta["failures"] = {"q8": "q8: the server died (signal 9)"}
    (run / "run.json").write_text(json.dumps(meta))
    report = build_report(run)
    q8 = report["rows"][1]
    mmlu = q8["comparison"]["tasks"]["mmlu"]
    assert (mmlu["n"], mmlu["only_reference"]) == (15, 5)  # an error is never paired as a wrong answer
    assert q8["average"] is not None  # 15 answered + 5 errors: every sample was sent
    assert q8["failure"] and "the server died" in render_markdown(report)


def test_rows_that_share_no_sample_say_so(tmp_path: Path) -> None:
    run = _run(tmp_path, [_target("bf16", "M", "BF16"), _target("q8", "M", "Q8_0")], {"mmlu": 20})
    store = RunStore(run)
    _write(store, "bf16", "mmlu", [True] * 20)
    _write(store, "q8", "mmlu", [None] * 20)  # every request failed
    store.close()
    report = build_report(run)
    q8 = report["rows"][1]
    assert q8["comparison_note"] == "shares no answered sample with bf16: nothing to compare"
    assert q8["comparison"]["tasks"]["mmlu"]["verdict"] == "not compared" and q8["delta_average"] is None
    assert "nothing to compare" in render_markdown(report)


def test_published_figures_against_the_measured_interval(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from orchestrator.cli import main

    # Qwen2-0.5B-Instruct BF16 is published at 37.9 on MMLU: 76/200 right (38 %) holds it.
    target = _target("bf16", "Qwen/Qwen2-0.5B-Instruct", "BF16")
    full = _run(tmp_path / "full", [target], {"mmlu": N})
    _write(RunStore(full), "bf16", "mmlu", [i < 76 for i in range(N)])
    RunStore(full).close()
    pub = build_report(full)["published"][0]
    assert "qwen.readthedocs.io" in pub["source"]
    cell = pub["rows"][0]["mmlu"]
    assert cell["comparable"] and cell["published"] == 37.9 and cell["inside"] is True
    assert cell["interval"][0] < 38.0 < cell["interval"][1]
    assert pub["rows"][0]["average"]["comparable"] is False  # the published Average spans three tasks
    # A limited task is a subset: no pretence of a reproduction.
    sub = tmp_path / "sub"
    manifest = json.loads((full / "run.json").read_text())
    manifest["manifest"]["tasks"]["mmlu"]["limit"] = N
    sub.mkdir()
    (sub / "run.json").write_text(json.dumps(manifest))
    _write(RunStore(sub), "bf16", "mmlu", [i < 10 for i in range(N)])
    RunStore(sub).close()
    cell = build_report(sub)["published"][0]["rows"][0]["mmlu"]
    assert not cell["comparable"] and cell["note"] == "subset, not comparable"
    assert "(subset, not comparable)" in render_markdown(build_report(sub))
    # A user's own reference file, same format; a malformed one is one line, exit 2.
    own = tmp_path / "own.json"
    own.write_text(json.dumps({"title": "mine", "source": "lab notes", "rows": [
        {"model": "qwen2-0.5b-instruct", "quantization": "bf16", "mmlu": 20.0}]}))  # fmt: skip
    assert main(["report", str(full), "--reference", str(own)]) == 0
    report = json.loads((full / "report.json").read_text())
    assert report["published"][0]["rows"][0]["mmlu"]["inside"] is False
    assert "Published vs measured" in capsys.readouterr().out
    own.write_text(json.dumps({"rows": [{"model": "m"}]}))
    assert main(["report", str(full), "--reference", str(own)]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


async def test_noise_floor_sends_the_reference_again_and_reads_deltas_against_it(
    tmp_path: Path, data_dir: Path
) -> None:
    """--noise-floor: each reference target's samples twice more (at the run's concurrency and
    at 1); the report shows reference-vs-itself flips, and a quantization Δ inside that floor says so."""
    import random

    from aiohttp import web
    from aiohttp.test_utils import TestServer

    from orchestrator.manifest import with_overrides
    from orchestrator.runner import Runner
    from orchestrator.tasks import manifest_tasks
    from tests.support.fake_openai import FakeOpenAI, chunk, sse

    noise = random.Random(7)

    async def wobbly(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        # A server whose batching changes ~15 % of its answers from one send to the next.
        return await sse(request, [chunk("B" if noise.random() > 0.15 else "C", "stop")])

    servers = []
    for handler in (wobbly, wobbly):
        server = TestServer(FakeOpenAI(handler).app(), host="127.0.0.1")
        await server.start_server()
        servers.append(server)
    try:
        urls = [str(s.make_url("")).rstrip("/") for s in servers]
        m = parse_manifest(
            {
                "run": {"name": "n", "output_dir": str(tmp_path), "data_dir": str(data_dir)},
                "tasks": {"mmlu": {"limit": 120, "shots": 0}},
                "client": {"concurrency": 8, "retries": 0},
                "targets": [
                    {"name": "bf16", "model": "M", "quantization": "BF16", "backend": "openai", "url": urls[0]},
                    {"name": "int8", "model": "M", "quantization": "GPTQ-Int8", "backend": "openai", "url": urls[1]},
                ],
            }
        )
        m = with_overrides(m, noise_floor=True)
        assert [t.name for t in m.targets] == ["bf16", "int8", "bf16.noise", "bf16.noise-c1"]
        assert [t.concurrency for t in m.targets[2:]] == [None, 1] and m.targets[3].noise_of == "bf16"
        assert with_overrides(m, noise_floor=True).targets == m.targets  # a resumed run keeps its two
        store = RunStore(tmp_path / "n")
        tasks = manifest_tasks(m, data_dir)
        store.write_meta({"run_id": "n", "manifest": m.to_dict(), "samples": {"mmlu": len(tasks[0].samples())}})
        await Runner(m, tasks, store).run()
        store.close()
    finally:
        for s in servers:
            await s.close()
    # Concurrency 1: no two requests of that target overlapped.
    c1 = sorted(
        (r.timing.wall_send, r.timing.wall_end) for r in store.records("bf16.noise-c1", "mmlu", "qwen@2") if r.timing
    )
    assert len(c1) == 120 and all(b[0] >= a[1] - 1e-3 for a, b in itertools.pairwise(c1))
    report = build_report(tmp_path / "n")
    rows = {r["target"]: r for r in report["rows"]}
    floor = rows["bf16.noise"]["comparison"]["tasks"]["mmlu"]
    assert rows["bf16.noise"]["reference"] == "bf16" and floor["right_to_wrong"] + floor["wrong_to_right"] > 0
    quant = rows["int8"]["comparison"]["tasks"]["mmlu"]
    assert rows["int8"]["reference"] == "bf16"  # never a noise row
    # The band spans both repeats' intervals; the int8 Δ is read against it, and its verdict says where it fell.
    band = quant["noise_band"]
    repeats = [rows[n]["comparison"]["tasks"]["mmlu"]["interval"] for n in ("bf16.noise", "bf16.noise-c1")]
    assert band == [min(i[0] for i in repeats), max(i[1] for i in repeats)]
    inside = band[0] <= quant["delta"] <= band[1]
    assert quant["inside_noise_floor"] is inside
    assert quant["verdict"].endswith("(inside the noise floor)") is inside
    md = render_markdown(report)
    assert "BF16 (repeat, c=1)" in md and "BF16 (repeat)" in md


def test_two_runs_get_paired_statistics_per_matched_row(tmp_path: Path) -> None:
    from orchestrator.report import compare_reports

    a = _run(tmp_path / "a", [_target("int4", "M", "GPTQ-Int4")], {"mmlu": N})
    b = _run(tmp_path / "b", [_target("int4-vllm", "M", "GPTQ-Int4")], {"mmlu": N})
    _write(RunStore(a), "int4", "mmlu", [i % 2 == 0 for i in range(N)])
    RunStore(a).close()
    writer = RunStore(b).writer("int4-vllm", "mmlu", "qwen@2")
    for i in range(N):
        right = i % 2 == 0 and i % 10 != 0  # B loses every tenth sample A had right
        writer.write(
            SampleRecord(
                id=f"mmlu/{i}", task="mmlu", subject=f"s{i % 4}", gold="A", reply="A" if right else "B",
                extracted="A" if right else "B", correct=right, attempts=1,
                prompt_digest="other" if i >= N - 4 else "",  # the last four were asked differently
            )
        )  # fmt: skip
    writer.close()
    cmp = compare_reports(build_report(a), build_report(b), a, b)
    paired = cmp["rows"][0]["paired"]["mmlu"]
    assert (paired["n"], paired["only_reference"], paired["only_quantized"]) == (N - 4, 4, 4)
    lost = sum(1 for i in range(N - 4) if i % 2 == 0 and i % 10 == 0)
    assert (paired["right_to_wrong"], paired["wrong_to_right"]) == (lost, 0)
    assert paired["p_value"] == pytest.approx(binomtest(0, lost, 0.5).pvalue) and paired["p_holm"] is not None


def _three_targets(tmp_path: Path) -> Path:
    run = _run(
        tmp_path,
        [_target("bf16", "M", "BF16"), _target("int8", "M", "GPTQ-Int8"), _target("int4", "M", "GPTQ-Int4")],
        {"mmlu": N, "ceval": N},
    )
    store = RunStore(run)
    for k, target in enumerate(("bf16", "int8", "int4")):
        for task in ("mmlu", "ceval"):
            _write(store, target, task, [(i * (k + 3)) % 7 > k for i in range(N)] + [None])
    store.close()
    return run


def test_targets_summarised_in_workers_or_here_give_the_same_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import orchestrator.summary as summary

    run = _three_targets(tmp_path)
    pools: list[int] = []

    class Counted(summary.ProcessPoolExecutor):
        def __init__(self, workers: int, **kwargs: Any) -> None:
            pools.append(workers)
            super().__init__(workers, **kwargs)

    monkeypatch.setattr(summary, "_cores", lambda: 2)
    monkeypatch.setattr(summary, "PARALLEL_BYTES", 0)  # a small run, summarised as a big one is
    monkeypatch.setattr(summary, "ProcessPoolExecutor", Counted)
    workers = json.dumps(build_report(run), sort_keys=True)
    assert pools == [2]  # really summarised in two workers
    monkeypatch.undo()

    monkeypatch.setattr(summary, "_cores", lambda: 1)
    assert json.dumps(build_report(run), sort_keys=True) == workers

    # Another thread alive (fork would copy its locks mid-use): fresh interpreters, the same report.
    monkeypatch.setattr(summary, "_cores", lambda: 2)
    monkeypatch.setattr(summary, "PARALLEL_BYTES", 0)
    monkeypatch.setattr(summary.threading, "active_count", lambda: 2)
    assert json.dumps(build_report(run), sort_keys=True) == workers
    monkeypatch.undo()

    # A machine where no worker can start (no semaphores, a sandbox): the same report, here.
    def refused(*args: Any, **kwargs: Any) -> Any:
        raise OSError(38, "Function not implemented")

    monkeypatch.setattr(summary, "_cores", lambda: 2)
    monkeypatch.setattr(summary, "PARALLEL_BYTES", 0)
    monkeypatch.setattr(summary, "ProcessPoolExecutor", refused)
    assert json.dumps(build_report(run), sort_keys=True) == workers


def test_a_malformed_record_in_a_worker_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import orchestrator.summary as summary
    from orchestrator.errors import DataError

    monkeypatch.setattr(summary, "_cores", lambda: 2)
    monkeypatch.setattr(summary, "PARALLEL_BYTES", 0)
    run = _three_targets(tmp_path)
    path = RunStore(run).samples_path("int8", "ceval", "qwen@2")
    with path.open("a") as f:
        f.write('{"not": "a record"}\n')
    with pytest.raises(DataError, match="is not a record of this run"):
        build_report(run)


def test_one_sample_per_subject_gets_honest_intervals_and_says_how(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The embedded default's size (one sample per subject): every interval of the report has a
    width this n can honestly claim, names its method, and an old run's zero-width figures are
    replaced when `orchestrate report` re-renders it (nothing is sent again)."""
    from orchestrator import stats
    from orchestrator.cli import main
    from orchestrator.tasks import build_task

    run = _run(tmp_path, [_target("f16", "M", "F16"), _target("q8", "M", "Q8_0")], {"mmlu": 57, "ceval": 52})
    store = RunStore(run)
    ref = {"mmlu": [i % 3 != 0 for i in range(57)], "ceval": [i % 2 == 0 for i in range(52)]}
    for task, rights in ref.items():
        _write(store, "f16", task, rights, subjects=len(rights))
        flipped = list(rights)
        flipped[0] = not flipped[0]  # one flip, none the other way: McNemar p = 1
        _write(store, "q8", task, flipped, subjects=len(rights))
    store.close()
    # What an earlier version wrote: a zero-width C-Eval interval and a "no detectable change".
    (run / "report.json").write_text(
        json.dumps({"rows": [{"target": "f16", "tasks": {"ceval": {"interval": [0.5, 0.5]}}}]})
    )
    assert main(["report", str(run)]) == 0
    out = capsys.readouterr().out
    report = json.loads((run / "report.json").read_text())
    rows = {r["target"]: r for r in report["rows"]}
    ceval = rows["f16"]["tasks"]["ceval"]
    task = build_task("ceval", None, setup="qwen")
    expected = stats.interval(task.outcomes(store.records("f16", "ceval", "qwen@2")))
    assert ceval["interval_method"] == "wilson-kish" and ceval["interval"] == expected.listed
    assert ceval["interval"][1] - ceval["interval"][0] > 0.2  # 52 samples at 50 %: about ±13 points
    assert rows["f16"]["average_interval"][0] < rows["f16"]["average"] < rows["f16"]["average_interval"][1]
    for name in ("mmlu", "ceval"):
        cmp = rows["q8"]["comparison"]["tasks"][name]
        assert cmp["interval"][0] < 0 < cmp["interval"][1] and cmp["interval_method"] == "bonett-price"
        assert cmp["verdict"].startswith("inconclusive") and cmp["mdd"] > 0.05
    average = rows["q8"]["comparison"]["average"]
    assert average["interval"][0] < 0 < average["interval"][1] and average["verdict"].startswith("inconclusive")
    figures = report["intervals"]["figures"]
    assert figures["C-Eval macro (headline)"] == "wilson-kish" and figures["MMLU micro (headline)"] == "wilson"
    assert figures["Average"] == "mover" and figures["Δ C-Eval"] == "bonett-price" and figures["Δ Average"] == "mover"
    md = (run / "report.md").read_text()
    assert "## How the intervals are made" in md and "Bonett–Price" in md and "Kish" in md
    assert "How the intervals are made" in (run / "report.html").read_text()
    assert "95 % intervals: wilson (MMLU); wilson-kish (C-Eval); mover (Average, Δ Average)" in out


def test_a_task_of_one_sample_has_no_interval_and_no_verdict(tmp_path: Path) -> None:
    run = _run(tmp_path, [_target("bf16", "M", "BF16"), _target("q4", "M", "Q4_K_M")], {"mmlu": 1})
    store = RunStore(run)
    _write(store, "bf16", "mmlu", [True])
    _write(store, "q4", "mmlu", [False])
    store.close()
    report = build_report(run)
    rows = {r["target"]: r for r in report["rows"]}
    agg = rows["bf16"]["tasks"]["mmlu"]
    assert agg["interval"] is None and agg["interval_note"] == "1 sample: too few for an interval"
    assert rows["bf16"]["average"] == 1.0 and rows["bf16"]["average_interval"] is None
    cmp = rows["q4"]["comparison"]["tasks"]["mmlu"]
    assert cmp["interval"] is None and cmp["verdict"].startswith("inconclusive — n too small: 1 paired sample")
    assert "[no interval]" in render_markdown(report)


def _ifeval(store: RunStore, target: str, strict: list[list[bool]]) -> None:
    writer = store.writer(target, "ifeval", "qwen@2")
    for i, followed in enumerate(strict):
        details = {"instruction_id_list": [f"kw:{j}" for j in range(len(followed))], "strict": followed,
                   "loose": followed}  # fmt: skip
        writer.write(SampleRecord(id=f"ifeval/{i}", task="ifeval", subject="if", target=target, gold=None,
                                  reply="r", correct=all(followed), attempts=1, score_details=details))  # fmt: skip


def test_a_second_published_model_and_rows_whose_weights_are_not_the_published_ones(tmp_path: Path) -> None:
    """SmolLM2-135M-Instruct's card publishes IFEval 29.9 (prompt/inst average, BF16): a BF16 row
    is compared on that figure; an F16 dequantized from the shipped Q4_1 stands beside it, labelled
    not comparable, never inside or outside."""
    strict = [[True, False], [False, False, True], [True], [False]] * 10  # prompt 10/40, inst 30/70
    targets = [
        _target("bf16", "HuggingFaceTB/SmolLM2-135M-Instruct", "BF16"),
        {**_target("f16", "SmolLM2-135M-Instruct", "F16"), "weights": "F16 dequantized from Q4_1"},
    ]
    run = _run(tmp_path, targets, {"ifeval": len(strict)})
    store = RunStore(run)
    for name in ("bf16", "f16"):
        _ifeval(store, name, strict)
    store.close()
    report = build_report(run)
    (smol,) = [t for t in report["published"] if "SmolLM2" in t["title"]]
    cells = {row["target"]: row["ifeval"] for row in smol["rows"]}
    expected = 100 * (10 / 40 + 30 / 70) / 2
    assert cells["bf16"]["comparable"], cells
    assert cells["bf16"]["measured"] == pytest.approx(expected)
    lo, hi = cells["bf16"]["interval"]
    assert lo < expected < hi and cells["bf16"]["inside"] is (lo <= 29.9 <= hi)
    assert not cells["f16"]["comparable"] and cells["f16"]["inside"] is None
    assert cells["f16"]["published"] == 29.9 and "dequantized from Q4_1" in cells["f16"]["note"]
    md = render_markdown(report)
    assert "SmolLM2-135M-Instruct model card" in md and "IFEval (average prompt/inst)" in md
    assert "weights F16 dequantized from Q4_1, not the published checkpoint's, not comparable" in md


def test_requests_sent_again_on_a_closed_keep_alive_connection_are_reported(tmp_path: Path) -> None:
    """A request re-sent at once on a connection the server had closed is still one sample; the
    report says how many there were (report.json's speed and a line under the table)."""
    run = _run(tmp_path, [_target("bf16", "M", "BF16")], {"mmlu": 20})
    store = RunStore(run)
    writer = store.writer("bf16", "mmlu", "qwen@2")
    for i in range(20):
        common = {"id": f"mmlu/{i}", "task": "mmlu", "subject": "s", "target": "bf16", "gold": "A", "reply": "A"}
        writer.write(SampleRecord(**common, extracted="A", rule="r", correct=True, resends=int(i < 3)))
    store.close()
    report = write_report(run)
    assert report["rows"][0]["speed"]["resent"] == 3
    assert "bf16: 3 requests were sent again at once" in (run / "report.md").read_text()
