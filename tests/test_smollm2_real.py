"""A real trained model on real servers: SmolLM2-135M-Instruct (tests/support/smollm2.py).

- A bench of the F16 (dequantized from the shipped Q4_1), Q8_0 and Q4_K_M quantized from it, and
  the shipped Q4_1 as a control, each on a managed llama-server, top-5 logprobs: the KLD is
  matched by token id, ranks the quantizations, and comes with llama-perplexity's statistics;
  every multiple-choice reply names its extraction rule, and `robust` abstains where `qwen`
  guesses; the model card's IFEval figure stands beside the F16 row, labelled not comparable.
- A peer oracle for IFEval: lm-evaluation-harness (its own venv, scripts/setup_lm_eval.sh; its
  `local-chat-completions` client and its own IFEval task on the local IFEval file) and the
  orchestrator answer the same prompts from one llama-server of the F16 at one slot with no prompt
  cache, through a proxy that records what each really sent. Requests, responses and the
  strict/loose verdicts per prompt must be equal, or each difference explained by a request
  difference this test names.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestrator.report import build_report
from orchestrator.store import RunStore
from orchestrator.tasks import build_task
from tests.support import smollm2
from tests.support.recording_proxy import RecordingProxy
from tests.support.servers import free_port, started, venv_python

pytestmark = pytest.mark.real_server

REPO = Path(__file__).resolve().parents[1]
MODEL = "SmolLM2-135M-Instruct"
LIMITS = {"mmlu": 20, "ceval": 20, "ifeval": 6}
CONTROL = "q4_1"  # the shipped checkpoint: the F16 holds its weights, dequantized


def _bench(manifest: dict[str, Any], out: Path, run_id: str) -> Path:
    path = out / f"{run_id}.yaml"
    path.write_text(yaml.safe_dump(manifest))
    cmd = [sys.executable, "-m", "orchestrator.cli", "bench", str(path), "--run-id", run_id, "--no-progress"]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=1800, env=os.environ.copy())
    assert done.returncode == 0, done.stderr[-3000:]
    (out / run_id / "stdout.txt").write_text(done.stdout)
    return out / run_id


@pytest.fixture(scope="module")
def smol_run(smollm2_dir: Path, data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("smollm2")

    def target(quant: str, **extra: Any) -> dict[str, Any]:
        return {"name": quant.lower(), "model": MODEL, "quantization": quant, "backend": "llamacpp",
                "launch": {"model_path": str(smollm2.path(smollm2_dir, quant)), "n_ctx": 4096,
                           "server": "llama-server"}, **extra}  # fmt: skip

    manifest = {
        "run": {"name": "smol", "output_dir": str(out), "data_dir": str(data_dir)},
        "tasks": {
            "mmlu": {"limit": LIMITS["mmlu"], "max_tokens": 16},
            "ceval": {"limit": LIMITS["ceval"], "max_tokens": 16},
            "ifeval": {"limit": LIMITS["ifeval"], "max_tokens": 256},
        },
        "generation": {"logprobs": 5},
        "client": {"concurrency": 4, "retries": 2},
        "speed_phase": {"requests": 8, "batch1_requests": 2, "input_tokens": 64, "output_tokens": 16, "duration": 5},
        "targets": [
            target("F16", weights="F16 dequantized from the shipped Q4_1"),
            target("Q8_0"), target("Q4_K_M"), target("Q4_1"),
        ],
    }  # fmt: skip
    return _bench(manifest, out, "smol")


def _row(report: dict[str, Any], target: str) -> dict[str, Any]:
    return next(r for r in report["rows"] if r["target"] == target)


def test_the_real_model_kld_is_matched_by_id_and_ranks_the_quantizations(smol_run: Path) -> None:
    report = build_report(smol_run)
    kld = {t: _row(report, t)["comparison"]["divergence"] for t in ("q8_0", "q4_k_m", CONTROL)}
    for target, found in kld.items():
        assert found["matched_by"] == "id", (target, found["matched_by"])  # llama-server sends ids
        tokens = found["tokens"]
        assert tokens["positions"] > 0 and set(tokens["kld_percentiles"]) == {"99", "95", "90", "50", "10", "5", "1"}
        assert tokens["rms_dp"] is not None and 0 <= tokens["same_top_p"] <= 1
        assert 0.5 < found["mass_covered"]["reference"] <= 1.0 + 1e-6
    assert kld["q8_0"]["kl_prefix"]["mean"] < kld["q4_k_m"]["kl_prefix"]["mean"]
    # The control holds the F16's own weights (the F16 is dequantized from it): far below Q4_K_M.
    assert kld[CONTROL]["kl_prefix"]["mean"] * 3 < kld["q4_k_m"]["kl_prefix"]["mean"]
    for target in ("f16", *kld):
        row = _row(report, target)
        cells = " ".join(
            f"{name} {100 * a['accuracy']:.1f} (n={a['n']})"
            for name, a in row["tasks"].items()
            if a["accuracy"] is not None
        )
        found = kld.get(target)
        extra = "" if found is None else (
            f"; KLD {found['kl_prefix']['mean']:.4g} {found['kl_prefix']['interval']}, top-1 "
            f"{100 * found['top1_agreement']:.1f} %, disjoint {found['disjoint_positions']}/{found['positions']}, "
            f"RMS Δp {found['tokens']['rms_dp']:.3g}"
        )  # fmt: skip
        print(f"{target}: Average {row['average'] and 100 * row['average']:.1f}; {cells}{extra}")


def test_every_real_reply_names_its_rule_and_robust_abstains_where_qwen_guesses(smol_run: Path, data_dir: Path) -> None:
    store = RunStore(smol_run)
    for name in ("mmlu", "ceval"):
        robust = build_task(name, data_dir, limit=LIMITS[name], max_tokens=16, setup="robust")
        samples = {s.id: s for s in robust.samples()}
        guessed = abstained = both = 0
        for target in ("f16", "q8_0", "q4_k_m", CONTROL):
            for record in store.records(target, name, "qwen@2"):
                assert record.answered and record.rule, (target, record.id)  # every record names its rule
                score = robust.score(samples[record.id], record.reply or "")
                assert score.rule
                qwen_guess = record.rule != "unparsed"
                guessed += qwen_guess
                abstained += score.rule == "unparsed"
                both += qwen_guess and score.rule == "unparsed"
        print(f"{name}: qwen extracted an answer from {guessed} replies; robust abstains on {abstained}, "
              f"{both} of them where qwen guessed")  # fmt: skip
        # robust never answers where qwen could not: it abstains at least as often.
        assert abstained >= sum(r.rule == "unparsed" for t in ("f16",) for r in store.records(t, name, "qwen@2"))


def test_the_model_cards_figure_stands_beside_a_row_whose_weights_differ(smol_run: Path) -> None:
    report = build_report(smol_run)
    (card,) = [t for t in report["published"] if MODEL in t["title"]]
    cell = next(r for r in card["rows"] if r["target"] == "f16")["ifeval"]
    assert cell["published"] == 29.9 and not cell["comparable"] and cell["inside"] is None
    assert "dequantized" in cell["note"]


# ---------------------------------------------------------------------------------------------
# The peer oracle: lm-evaluation-harness and the orchestrator on the same prompts
# ---------------------------------------------------------------------------------------------
PEER_PROMPTS = 16
PEER_TOKENS = 200
# Request keys one tool sends and the other does not, each with why it cannot change a greedy
# reply of llama-server (the test fails on any key not named here).
ONLY_ORCHESTRATOR = {
    "stream": "the orchestrator streams (to time tokens); the text is the same",
    "stream_options": "asks for usage in the stream: accounting, not decoding",
    "top_p": "1.0, llama-server's default: no effect",
    "top_k": "1: only the most likely token, which temperature 0 picks anyway",
    "repeat_penalty": "1.0, no penalty (llama-server's default; llama-cpp-python's server defaults to 1.1)",
}
ONLY_LM_EVAL = {
    "stop": "lm-eval's IFEval stops on nothing (until: []): an empty list, llama-server's default",
}


@pytest.fixture(scope="module")
def peer_server(smollm2_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One llama-server of the F16 at one slot, no prompt cache: replies that depend on nothing
    but the request."""
    binary = Path(sys.executable).parent / "llama-server"
    port = free_port()
    log = tmp_path_factory.mktemp("peer") / "llama-server.log"
    cmd = [str(binary), "-m", str(smollm2.path(smollm2_dir, "F16")), "--host", "127.0.0.1", "--port", str(port),
           "--jinja", "--ctx-size", "4096", "--parallel", "1", "--no-cache-prompt", "--cache-ram", "0",
           "--no-webui"]  # fmt: skip
    with started(cmd, f"http://127.0.0.1:{port}/health", log):
        yield f"http://127.0.0.1:{port}"


def _lm_eval(proxy: str, subset: Path, out: Path) -> dict[str, dict[str, Any]]:
    """lm-eval's IFEval (its own task, pointed at ``subset``) through ``proxy``; its samples by key."""
    python = venv_python("ORCHESTRATOR_LM_EVAL_PYTHON", "setup_lm_eval.sh")
    tasks = out / "tasks"
    tasks.mkdir()
    site = subprocess.run([python, "-c", "import lm_eval, os; print(os.path.dirname(lm_eval.__file__))"],
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    (tasks / "ifeval_local.yaml").write_text(yaml.safe_dump({
        "include": str(Path(site) / "tasks" / "ifeval" / "ifeval.yaml"), "task": "ifeval_local",
        "dataset_path": "json", "dataset_kwargs": {"data_files": {"train": str(subset)}},
    }))  # fmt: skip
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1",
           "NLTK_DATA": str(Path(os.environ.get("ORCHESTRATOR_CACHE", Path.home() / ".cache" / "orchestrator"))
                            / "nltk_data")}  # fmt: skip
    cmd = [python, "-m", "lm_eval", "--model", "local-chat-completions", "--model_args",
           f"model=smollm2,base_url={proxy}/v1/chat/completions,num_concurrent=1,max_retries=1,tokenized_requests=False",
           "--tasks", "ifeval_local", "--include_path", str(tasks), "--apply_chat_template",
           "--gen_kwargs", f"max_gen_toks={PEER_TOKENS}", "--output_path", str(out / "results"),
           "--log_samples"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800, cwd=out)
    assert done.returncode == 0, done.stderr[-3000:]
    (found,) = list((out / "results").rglob("samples_ifeval_local_*.jsonl"))
    samples = [json.loads(line) for line in found.read_text().splitlines() if line.strip()]
    return {str(s["doc"]["key"]): s for s in samples}


def test_lm_eval_and_the_orchestrator_agree_on_ifeval(
    peer_server: str, data_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    out = tmp_path_factory.mktemp("peer-run")
    proxy = RecordingProxy(peer_server)
    proxy.start()
    try:
        manifest = {
            "run": {"name": "peer", "output_dir": str(out), "data_dir": str(data_dir)},
            "tasks": {"ifeval": {"limit": PEER_PROMPTS, "max_tokens": PEER_TOKENS}},
            "client": {"concurrency": 1},
            "speed_phase": {"enabled": False},  # the proxy's requests are lm-eval's peers, one for one
            "targets": [{"name": "f16", "model": MODEL, "quantization": "F16", "backend": "llamacpp",
                         "url": proxy.url}],
        }  # fmt: skip
        run = _bench(manifest, out, "peer")
        ours = {r.id.split("/")[-1]: r for r in RunStore(run).records("f16", "ifeval", "qwen@2")}
        sent_by_us = len(proxy.requests)
        # The same prompts, in the orchestrator's stratified subset, as lm-eval's dataset file.
        rows = [json.loads(line) for line in (data_dir / "ifeval" / "input_data.jsonl").read_text().splitlines()]
        subset = out / "subset.jsonl"
        subset.write_text("".join(json.dumps(r) + "\n" for r in rows if str(r["key"]) in ours))
        theirs = _lm_eval(proxy.url, subset, out)
    finally:
        proxy.stop()
    assert set(theirs) == set(ours) and len(ours) == PEER_PROMPTS

    def by_prompt(bodies: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
        return {b["messages"][-1]["content"]: b for b in bodies if b.get("messages")}

    our_bodies = by_prompt(proxy.chats(0)[:sent_by_us])
    their_bodies = by_prompt(proxy.chats(sent_by_us))
    differences: list[str] = []
    for key, record in ours.items():
        prompt = record.request["messages"][-1]["content"] if record.request else None
        mine, other = our_bodies[prompt], their_bodies[prompt]
        # The request: the same conversation, length limit and greedy settings.
        assert mine["messages"] == other["messages"], key
        assert mine["max_tokens"] == other["max_tokens"] == PEER_TOKENS
        assert mine["temperature"] == other["temperature"] == 0
        assert mine["seed"] == other["seed"]
        unexplained = [
            f"the orchestrator sends {k}={mine[k]!r}" for k in set(mine) - set(other) - set(ONLY_ORCHESTRATOR)
        ]
        unexplained += [f"lm-eval sends {k}={other[k]!r}" for k in set(other) - set(mine) - set(ONLY_LM_EVAL)]
        unexplained += [f"both send {k}: {mine[k]!r} vs {other[k]!r}" for k in set(mine) & set(other)
                        if k not in ("model", "messages") and mine[k] != other[k]]  # fmt: skip
        assert not unexplained, unexplained
        assert all(other[k] in ([], None) for k in set(other) - set(mine)), other
        # The response and the verdicts, per prompt.
        sample = theirs[key]
        reply = sample["resps"][0][0]
        details = record.score_details or {}
        verdicts = {
            "prompt_level_strict_acc": all(details["strict"]),
            "inst_level_strict_acc": list(details["strict"]),
            "prompt_level_loose_acc": all(details["loose"]),
            "inst_level_loose_acc": list(details["loose"]),
        }
        if reply != record.reply:
            differences.append(f"{key}: responses differ")
        for metric, value in verdicts.items():
            if sample[metric] != value and reply == record.reply:
                differences.append(f"{key}: {metric} {sample[metric]} (lm-eval) vs {value} (orchestrator)")
    ours_metrics = build_report(run)["rows"][0]["tasks"]["ifeval"]
    theirs_metrics = {m: sum(_flat(s[m]) for s in theirs.values()) / sum(len(_list(s[m])) for s in theirs.values())
                      for m in ("prompt_level_strict_acc", "prompt_level_loose_acc", "inst_level_strict_acc",
                                "inst_level_loose_acc")}  # fmt: skip
    print(
        "orchestrator: prompt strict {prompt_strict:.4f} loose {prompt_loose:.4f}, instruction strict "
        "{instruction_strict:.4f} loose {instruction_loose:.4f}".format(**ours_metrics)
    )
    print(
        "lm-eval:      prompt strict {prompt_level_strict_acc:.4f} loose {prompt_level_loose_acc:.4f}, "
        "instruction strict {inst_level_strict_acc:.4f} loose {inst_level_loose_acc:.4f}".format(**theirs_metrics)
    )
    print(f"{len(ours)} prompts, {len(differences)} differences: {differences}")
    assert not differences


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _flat(value: Any) -> float:
    return float(sum(bool(v) for v in _list(value)))
