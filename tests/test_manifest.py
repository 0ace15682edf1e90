"""Manifest validation: every error names the file, the key path and what was expected."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestrator.cli import main
from orchestrator.manifest import ManifestError, load_manifest, parse_manifest

REPO = Path(__file__).resolve().parents[1]


def base() -> dict[str, Any]:
    return {
        "run": {"name": "t"},
        "tasks": {"mmlu": {"limit": 10}},
        "targets": [
            {"name": "a", "model": "M", "quantization": "BF16", "backend": "vllm", "url": "http://127.0.0.1:8001"},
            {"name": "b", "model": "M", "quantization": "Q8_0", "backend": "llamacpp", "launch": {"model_path": "x"}},
        ],
    }


def error_of(data: Any) -> ManifestError:
    with pytest.raises(ManifestError) as info:
        parse_manifest(data, "m.yaml")
    return info.value


def test_valid_manifest_is_frozen_and_typed() -> None:
    m = parse_manifest(base(), "m.yaml")
    assert m.targets[1].launch is not None and m.targets[1].launch.n_ctx == 4096
    assert m.client.concurrency == 16 and m.generation.temperature == 0.0
    with pytest.raises(AttributeError):
        m.run.name = "other"  # type: ignore[misc]
    assert m.to_dict()["targets"][0]["url"] == "http://127.0.0.1:8001"


@pytest.mark.parametrize(
    ("mutate", "path", "words"),
    [
        (lambda d: d["targets"][0].update(colour="red"), "targets[0].colour", "unknown key"),
        (lambda d: d["targets"][1].update(name="a"), "targets[1].name", "duplicate target name 'a'"),
        (lambda d: d["targets"][0].update(url="localhost:8000"), "targets[0].url", "http(s) URL"),
        (lambda d: d["targets"][0].update(url="http://h:99999"), "targets[0].url", "port"),
        (lambda d: d["targets"][0].pop("model"), "targets[0].model", "missing required key"),
        (
            lambda d: (
                d["client"].update(concurrency="many") if "client" in d else d.update(client={"concurrency": "x"})
            ),
            "client.concurrency",
            "expected an integer, got str",
        ),
        (lambda d: d["tasks"]["mmlu"].update(limit=True), "tasks.mmlu.limit", "integer"),
        (lambda d: d["tasks"].update(hellaswag={}), "tasks.hellaswag", "unknown task"),
        (lambda d: d["targets"][0].update(backend="triton"), "targets[0].backend", "one of 'openai'"),
        (lambda d: d.update(generation={"temperature": 0.7}), "generation.temperature", "greedy"),
        (lambda d: d["targets"][1]["launch"].update(repo="r"), "targets[1].launch", "either model_path"),
        (lambda d: d["targets"][0].update(launch={"model_path": "x"}), "targets[0].launch", "llamacpp"),
        (lambda d: d["targets"][1].pop("launch"), "targets[1].url", "missing required key"),
        (lambda d: d.update(targets="a"), "targets", "a list of"),
        (lambda d: d["targets"][0].update(url="${NOT_SET_ANYWHERE_42}"), "targets[0].url", "NOT_SET_ANYWHERE_42"),
    ],
)
def test_errors_name_key_path_and_expectation(mutate: Any, path: str, words: str) -> None:
    data = base()
    mutate(data)
    err = error_of(data)
    assert err.path == path
    assert words in str(err)
    assert str(err).startswith(f"m.yaml: {path}: ")
    assert "\n" not in str(err)


def test_the_client_section_under_its_old_name_still_reads() -> None:
    # Manifests and run.json files written when the section was called `load` (resumable runs).
    old = {**base(), "load": {"concurrency": 3, "retries": 1}}
    m = parse_manifest(old)
    assert (m.client.concurrency, m.client.retries) == (3, 1) and "load" not in m.to_dict()
    both = {**base(), "load": {"concurrency": 3}, "client": {"concurrency": 4}}
    assert "not both" in str(error_of(both))


def test_env_expansion(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOME_URL", "http://127.0.0.1:9")
    data = base()
    data["targets"][0]["url"] = "${SOME_URL}"
    assert parse_manifest(data).targets[0].url == "http://127.0.0.1:9"


def test_yaml_syntax_error_names_line(tmp_path: Path) -> None:
    p = tmp_path / "bad.yaml"
    p.write_text("run:\n  name: [unclosed\n")
    with pytest.raises(ManifestError) as info:
        load_manifest(p)
    assert str(p) in str(info.value) and "line" in str(info.value)


def test_shipped_manifests_validate(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("SMOKE_OUTPUT_DIR", "SMOKE_DATA_DIR", "SMOKE_VLLM_URL", "SMOKE_MODEL_DIR"):
        monkeypatch.setenv(var, "http://127.0.0.1:1" if var.endswith("URL") else "/tmp")
    for name in ("local.yaml", "qwen2-7b.yaml", "smoke.yaml"):
        m = load_manifest(REPO / "manifests" / name)
        assert m.targets
    local = load_manifest(REPO / "manifests" / "local.yaml")
    assert [t.quantization for t in local.targets] == ["FP16", "Q8_0", "Q4_K_M"]
    assert all(t.launch and t.launch.repo == "Qwen/Qwen2-0.5B-Instruct-GGUF" for t in local.targets)


def test_cli_bad_manifest_is_one_line_exit_2(tmp_path: Path) -> None:
    data = base()
    data["targets"][2:] = [dict(data["targets"][0], name="c", url="ftp://x")]
    p = tmp_path / "m.yaml"
    p.write_text(yaml.safe_dump(data))
    for command in ("validate", "bench"):
        done = subprocess.run(
            [sys.executable, "-m", "orchestrator.cli", command, str(p)], capture_output=True, text=True, cwd=REPO
        )
        assert done.returncode == 2
        assert "Traceback" not in done.stderr
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and "targets[2].url" in lines[0] and str(p) in lines[0]


def test_cli_validate_ok(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = tmp_path / "m.yaml"
    p.write_text(yaml.safe_dump(base()))
    (tmp_path / "x").write_bytes(b"GGUF")  # target b's model_path, relative to the manifest
    assert main(["validate", str(p)]) == 0
    assert "OK" in capsys.readouterr().out
    assert main(["validate", str(tmp_path / "missing.yaml")]) == 2


def test_cli_validate_names_the_llama_server_a_managed_target_gets(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = base()
    launch = next(t for t in data["targets"] if "launch" in t)["launch"]
    p = tmp_path / "m.yaml"
    (tmp_path / "x").write_bytes(b"GGUF")
    binary = tmp_path / "llama-server"
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    launch["server"] = "llama-cpp-python"
    p.write_text(yaml.safe_dump({**data, "targets": [t for t in data["targets"] if "launch" in t]}))
    assert main(["validate", str(p)]) == 0
    assert ": llama-cpp-python" in capsys.readouterr().out
    launch.update(server="llama-server", binary="./llama-server")  # relative to the manifest
    p.write_text(yaml.safe_dump({**data, "targets": [t for t in data["targets"] if "launch" in t]}))
    assert main(["validate", str(p)]) == 0
    assert f": llama-server ({tmp_path}" in capsys.readouterr().out
    launch["binary"] = "nowhere/llama-server"
    p.write_text(yaml.safe_dump({**data, "targets": [t for t in data["targets"] if "launch" in t]}))
    assert main(["validate", str(p)]) == 2
    out = capsys.readouterr()
    assert "OK" not in out.out and "llama-server binary not found or not executable" in out.err


def test_run_json_never_holds_url_credentials() -> None:
    from orchestrator.secrets import redact

    data = base()
    data["targets"][0]["url"] = "https://user:s3cret@example.org:8443/v1"
    redacted = redact(parse_manifest(data).to_dict())
    assert redacted["targets"][0]["url"] == "https://***@example.org:8443/v1"
    assert "s3cret" not in str(redacted)
