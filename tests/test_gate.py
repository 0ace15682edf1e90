"""The regression gate against known truth: runs written with known flips (a loss beyond the
tolerance fails the right rows; noise-only differences pass; too few samples are inconclusive,
and fail only with --require-power), error and unparsed limits, a baseline run paired per sample,
`orchestrate bench --gate` against fake servers that answer from the gold with known flips, and
the JUnit XML validated against the JUnit schema CI systems read (Jenkins' junit-10.xsd)."""

from __future__ import annotations

import asyncio
import json
import random
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web

from orchestrator.cli import main
from orchestrator.cli.gate import EXIT_GATE_FAILED
from orchestrator.gate import GateConfig, GateError, evaluate, loss_check, parse_losses, parse_share
from orchestrator.report import build_report
from orchestrator.report.model import Report
from orchestrator.stats import Paired
from orchestrator.store import RunStore
from orchestrator.tasks import build_task
from tests.support.fake_openai import chunk, sse
from tests.support.synthetic import bench_run, target, write_outcomes

REPO = Path(__file__).resolve().parents[1]


def _rights(n: int, accuracy: float, seed: int) -> list[bool | None]:
    rng = random.Random(seed)
    return [rng.random() < accuracy for _ in range(n)]


def _flip(rights: list[bool | None], right_to_wrong: int, wrong_to_right: int, seed: int) -> list[bool | None]:
    """The same outcomes with a known number of flips each way."""
    out = list(rights)
    rng = random.Random(seed)
    right = [i for i, r in enumerate(out) if r]
    wrong = [i for i, r in enumerate(out) if r is False]
    for i in rng.sample(right, right_to_wrong):
        out[i] = False
    for i in rng.sample(wrong, wrong_to_right):
        out[i] = True
    return out


def _run(tmp_path: Path, name: str, rows: dict[str, list[bool | None]], task: str = "mmlu") -> Path:
    quants = {"bf16": "BF16", "int8": "GPTQ-Int8", "int4": "GPTQ-Int4"}
    run = bench_run(tmp_path / name, [target(t, "M", quants[t]) for t in rows], {task: len(next(iter(rows.values())))})
    store = RunStore(run)
    for t, rights in rows.items():
        write_outcomes(store, t, task, rights)
    store.close()
    return run


def _gate(run: Path, *args: str) -> tuple[int, dict[str, Any]]:
    code = main(["gate", str(run), *args])
    return code, json.loads((run / "gate.json").read_text())


def test_a_loss_beyond_the_tolerance_fails_its_row_only(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = _rights(600, 0.7, 1)
    run = _run(tmp_path, "a", {"bf16": base, "int8": _flip(base, 3, 3, 2), "int4": _flip(base, 60, 6, 3)})
    code, gate = _gate(run, "--max-loss", "mmlu=2,average=2")
    assert code == EXIT_GATE_FAILED and gate["status"] == "fail"
    assert gate["failing_rows"] == ["int4"]
    by = {(c["target"], c["task"]): c for c in gate["cases"]}
    lost = by[("int4", "mmlu")]
    assert lost["status"] == "fail" and lost["figures"]["delta"] == pytest.approx(-54 / 600)
    assert lost["figures"]["interval"][1] < -0.02
    assert by[("int8", "mmlu")]["status"] == "pass" and by[("int8", "average")]["status"] == "pass"
    err = capsys.readouterr().err
    assert [line for line in err.splitlines() if line.startswith("FAIL")] == [
        next(line for line in err.splitlines() if line.startswith("FAIL int4:"))
    ]
    assert "gate FAIL: 1 of 3 rows failed" in err


@pytest.mark.parametrize("seed", range(6))
def test_noise_only_differences_pass(tmp_path: Path, seed: int) -> None:
    base = _rights(800, 0.65, seed)
    run = _run(tmp_path, "n", {"bf16": base, "int8": _flip(base, 4, 4, seed + 10)})
    code, gate = _gate(run, "--max-loss", "mmlu=2")
    assert code == 0 and gate["status"] == "pass" and not gate["inconclusive"]


def test_too_few_samples_are_inconclusive_and_fail_only_when_power_is_required(tmp_path: Path) -> None:
    base = _rights(30, 0.6, 4)
    run = _run(tmp_path, "s", {"bf16": base, "int4": _flip(base, 1, 0, 5)})
    code, gate = _gate(run, "--max-loss", "mmlu=1")
    assert code == 0 and gate["inconclusive"] == ["int4/mmlu"]
    code, gate = _gate(run, "--max-loss", "mmlu=1", "--require-power")
    assert code == EXIT_GATE_FAILED and gate["failing_rows"] == ["int4"]
    [check] = next(c for c in gate["cases"] if c["target"] == "int4")["checks"]
    assert "cannot detect a 1-point loss" in check["message"]


def test_error_and_unparsed_limits(tmp_path: Path) -> None:
    base = _rights(200, 0.7, 6)
    broken: list[bool | None] = list(base)
    for i in range(6):
        broken[i] = None  # 6 of 200 failed requests: 3 %
    run = _run(tmp_path, "e", {"bf16": base, "int4": broken})
    code, gate = _gate(run, "--max-error-rate", "2%")
    assert code == EXIT_GATE_FAILED and gate["failing_rows"] == ["int4"]
    code, _ = _gate(run, "--max-error-rate", "5%")
    assert code == 0


def test_against_a_baseline_each_checkpoint_is_paired_with_itself(tmp_path: Path) -> None:
    base, int4 = _rights(600, 0.7, 7), None
    int4 = _flip(base, 20, 20, 8)  # the quantization's own flips, the same in both runs
    before = _run(tmp_path, "before", {"bf16": base, "int4": int4})
    after = _run(tmp_path, "after", {"bf16": base, "int4": _flip(int4, 70, 5, 9)})  # a release regressed int4
    code, gate = _gate(after, "--max-loss", "mmlu=2", "--baseline", str(before))
    assert code == EXIT_GATE_FAILED and gate["failing_rows"] == ["int4"] and gate["baseline"] == "r"
    lost = next(c for c in gate["cases"] if (c["target"], c["task"]) == ("int4", "mmlu"))
    assert lost["against"] == "r/int4" and lost["figures"]["delta"] == pytest.approx(-65 / 600)
    # Against its reference row alone, the same run's int4 (-65-0 flips against bf16) fails too, but
    # the baseline pairs it with its own earlier answers, bf16 against bf16: unchanged, pass.
    bf16 = next(c for c in gate["cases"] if (c["target"], c["task"]) == ("bf16", "mmlu"))
    assert bf16["status"] == "pass" and bf16["figures"]["delta"] == 0


def test_bad_limits_are_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = _run(tmp_path, "b", {"bf16": _rights(20, 0.5, 1)})
    assert main(["gate", str(run)]) == 2
    assert main(["gate", str(run), "--max-loss", "gsm8k=1"]) == 2
    assert main(["gate", str(run), "--max-loss", "mmlu"]) == 2
    assert main(["gate", str(run), "--max-slowdown", "fast"]) == 2
    assert main(["gate", str(run), "--max-loss", "mmlu=1", "--baseline", str(tmp_path)]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(lines) == 5 and "gsm8k" in lines[1]
    with pytest.raises(GateError):
        parse_share("150%", "--max-unparsed")
    assert parse_losses("MMLU=1.5, average=0") == {"mmlu": 1.5, "average": 0.0}
    assert parse_share("10%", "x") == parse_share("0.1", "x") == parse_share("10", "x") == pytest.approx(0.1)


def test_the_loss_rule_reads_the_interval_not_the_point() -> None:
    def paired(delta: float, lo: float, hi: float, mdd: float) -> Paired:
        return Paired(500, 0, 0, 0.7, 0.7 + delta, delta, (lo, hi), 10, 5, 15, 0.2, mdd)

    assert loss_check(paired(-0.03, -0.05, -0.011, 0.02), 1.0, False).status == "fail"  # wholly below -1 pt
    assert loss_check(paired(-0.03, -0.05, -0.009, 0.02), 1.0, False).status == "inconclusive"  # not shown
    assert loss_check(paired(0.0, -0.008, 0.008, 0.01), 1.0, False).status == "pass"  # a 1-pt loss excluded
    assert loss_check(paired(0.0, -0.03, 0.03, 0.04), 1.0, False).status == "inconclusive"
    assert loss_check(paired(0.0, -0.03, 0.03, 0.04), 1.0, True).status == "fail"  # mdd 4 pts > 1: underpowered
    assert loss_check(paired(-0.005, -0.02, 0.01, 0.009), 1.0, True).status == "inconclusive"  # powered
    assert loss_check(None, 1.0, False).status == "inconclusive" and loss_check(None, 1.0, True).status == "fail"


def _validate_junit(path: Path, xsd: Path) -> ET.Element:
    import xmlschema

    xmlschema.XMLSchema(str(xsd)).validate(str(path))
    return ET.parse(path).getroot()


def test_the_junit_file_follows_the_schema_ci_systems_read(tmp_path: Path, junit_xsd: Path) -> None:
    base = _rights(400, 0.7, 11)
    run = _run(tmp_path, "j", {"bf16": base, "int8": _flip(base, 2, 2, 12), "int4": _flip(base, 50, 2, 13)})
    code = main(["gate", str(run), "--max-loss", "mmlu=1,average=1", "--max-unparsed", "5%"])
    assert code == EXIT_GATE_FAILED
    root = _validate_junit(run / "gate.junit.xml", junit_xsd)
    cases = root.findall("./testsuite/testcase")
    gate = json.loads((run / "gate.json").read_text())
    assert len(cases) == len(gate["cases"]) == 3 + 2  # a case per row x task, and the two rows' Average
    failed = [(c.get("classname"), c.get("name")) for c in cases if c.find("failure") is not None]
    assert failed == [("int4", "MMLU"), ("int4", "average")]
    assert root.find("testsuite").get("failures") == "2"  # type: ignore[union-attr]
    message = next(c for c in cases if c.get("classname") == "int4").find("failure").get("message")  # type: ignore[union-attr]
    assert "loss" in message and "beyond the 1-point tolerance" in message
    # Elsewhere: a path of one's own choosing.
    out = tmp_path / "ci" / "junit.xml"
    main(["gate", str(run), "--max-loss", "mmlu=1", "--junit", str(out)])
    _validate_junit(out, junit_xsd)


def test_kld_and_speed_limits(tmp_path: Path) -> None:
    """The KLD and slowdown checks on the figures the report gives them."""
    from tests.support.synthetic import kl_run, write_speed_phase

    run = kl_run(tmp_path, {"f16": 0.0, "q8": 0.01, "q4": 1.5})  # logit noise: q4's KL far above q8's
    report = Report.from_json(build_report(run))
    result = evaluate(report, GateConfig(max_kld=0.05))
    status = {c.target: c.status for c in result.cases if c.task == "kld"}
    assert status == {"q8": "pass", "q4": "fail"}, [c.message for c in result.cases]
    run2 = bench_run(tmp_path / "speed", [target("bf16", "M", "BF16"), target("int4", "M", "GPTQ-Int4")], {"mmlu": 50})
    store = RunStore(run2)
    for t in ("bf16", "int4"):
        write_outcomes(store, t, "mmlu", _rights(50, 0.6, 3))
    store.close()
    write_speed_phase(run2, "bf16", tpot_ms=10.0)
    write_speed_phase(run2, "int4", tpot_ms=14.0)  # ~30 % fewer tokens per second
    report = Report.from_json(build_report(run2))
    speed = {c.target: c for c in evaluate(report, GateConfig(max_slowdown=0.1)).cases if c.task == "speed"}
    assert speed["int4"].status == "fail" and "slower" in speed["int4"].message
    assert all(c.status == "pass" for c in evaluate(report, GateConfig(max_slowdown=0.5)).cases if c.task == "speed")


# ---------------------------------------------------------------------------------------------
# `orchestrate bench --gate` against fake servers that answer from the gold, with known flips
# ---------------------------------------------------------------------------------------------
N = 300


def _gold(data_dir: Path) -> dict[str, tuple[str, int]]:
    """The last user message of each MMLU sample -> (its gold letter, its index)."""
    samples = build_task("mmlu", data_dir, limit=N, shots=0).samples()
    return {s.messages[-1][1]: (str(s.gold), i) for i, s in enumerate(samples)}


def oracle(gold: dict[str, tuple[str, int]], wrong: set[int]) -> Any:
    """A server that answers each sample's gold letter, or another letter for the indices in ``wrong``."""

    async def handler(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        letter, i = gold[body["messages"][-1]["content"]]
        if i in wrong:
            letter = "ABCD"[("ABCD".index(letter) + 1) % 4]
        usage = {
            "object": "chat.completion.chunk",
            "choices": [],
            "usage": {"prompt_tokens": 9, "completion_tokens": 1},
        }
        return await sse(request, [chunk(role=True, content=""), chunk(letter, "stop"), usage])

    return handler


async def _bench(tmp_path: Path, data_dir: Path, urls: dict[str, str], run_id: str, *gate: str) -> tuple[int, str]:
    quants = {"bf16": "BF16", "int4": "GPTQ-Int4"}
    manifest = {
        "run": {"name": "g", "output_dir": str(tmp_path / "runs"), "data_dir": str(data_dir)},
        "tasks": {"mmlu": {"limit": N, "shots": 0}},
        "client": {"concurrency": 8, "retries": 0},
        "speed_phase": {"enabled": False},
        "targets": [{"name": n, "model": "M", "quantization": quants[n], "backend": "openai", "url": u}
                    for n, u in urls.items()],
    }  # fmt: skip
    path = tmp_path / f"{run_id}.yaml"
    path.write_text(yaml.safe_dump(manifest))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "orchestrator.cli", "bench", str(path), "--run-id", run_id, "--no-progress", *gate,
        cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, err.decode()


async def test_bench_gate_on_fake_servers_with_known_flips(
    fake_url: Any, tmp_path: Path, data_dir: Path, junit_xsd: Path
) -> None:
    gold = _gold(data_dir)
    rng = random.Random(5)
    own = set(rng.sample(range(N), 90))  # what the quantization gets wrong, run after run
    ref, _ = await fake_url(oracle(gold, set(rng.sample(range(N), 75))))
    stable, _ = await fake_url(oracle(gold, own))
    code, err = await _bench(
        tmp_path, data_dir, {"bf16": ref, "int4": stable}, "before", "--gate", "--max-error-rate", "1%"
    )
    assert code == 0, err
    # The next release: int4 now also gets 45 more samples wrong.
    regressed, _ = await fake_url(oracle(gold, own | set(rng.sample(sorted(set(range(N)) - own), 45))))
    before = tmp_path / "runs" / "before"
    code, err = await _bench(
        tmp_path, data_dir, {"bf16": ref, "int4": regressed}, "after",
        "--gate", "--max-loss", "mmlu=3", "--baseline", str(before),
    )  # fmt: skip
    assert code == EXIT_GATE_FAILED, err
    gate = json.loads((tmp_path / "runs" / "after" / "gate.json").read_text())
    assert gate["failing_rows"] == ["int4"]
    lost = next(c for c in gate["cases"] if c["target"] == "int4")
    assert lost["figures"]["delta"] == pytest.approx(-45 / N) and lost["against"] == "before/int4"
    assert "FAIL int4: MMLU loss" in err and "gate FAIL: 1 of 2 rows failed" in err
    _validate_junit(tmp_path / "runs" / "after" / "gate.junit.xml", junit_xsd)
    # The same servers again: only noise (none here: greedy fakes) -> the gate passes.
    code, err = await _bench(
        tmp_path, data_dir, {"bf16": ref, "int4": regressed}, "again",
        "--gate", "--max-loss", "mmlu=3", "--baseline", str(tmp_path / "runs" / "after"),
    )  # fmt: skip
    assert code == 0, err
    assert "gate PASS: 0 of 2 rows failed" in err


def test_the_github_actions_example_runs_a_gate_this_cli_accepts() -> None:
    from orchestrator.cli.gate import gate_config
    from orchestrator.cli.parser import build_parser

    workflow = yaml.safe_load((REPO / "examples" / "github-actions-gate.yml").read_text())
    steps = workflow["jobs"]["gate"]["steps"]
    command = next(s["run"] for s in steps if "orchestrate bench" in s.get("run", ""))
    argv = command.split()[1:]  # after .venv/bin/orchestrate
    args = build_parser().parse_args(argv)
    assert args.gate and args.baseline == "ci/baseline"
    config = gate_config(_without_baseline_check(args))
    assert config.max_loss == {"mmlu": 2.0, "ifeval": 3.0, "average": 2.0} and config.max_error_rate == 0.01
    assert (REPO / args.manifest).is_file()


def _without_baseline_check(args: Any) -> Any:
    args.baseline = None  # the example's baseline lives in the user's repository, not this one
    return args


def test_noise_floor_rows_are_neither_gated_nor_taken_for_their_reference(tmp_path: Path) -> None:
    base = _rights(400, 0.7, 21)
    runs = []
    for name in ("before", "after"):
        targets = [target("bf16", "M", "BF16"), {**target("bf16.noise", "M", "BF16"), "noise_of": "bf16"}]
        run = bench_run(tmp_path / name, targets, {"mmlu": 400})
        store = RunStore(run)
        write_outcomes(store, "bf16", "mmlu", base)
        write_outcomes(store, "bf16.noise", "mmlu", _flip(base, 80, 0, 22 if name == "before" else 23))
        store.close()
        runs.append(run)
    code, gate = _gate(runs[1], "--max-loss", "mmlu=1", "--baseline", str(runs[0]))
    assert code == 0, gate["failing_rows"]
    [case] = [c for c in gate["cases"]]
    assert (case["target"], case["against"], case["figures"]["delta"]) == ("bf16", "r/bf16", 0)
