"""Any input a manifest file can hold gives a Manifest or one ManifestError, quickly: random bytes,
random YAML, wrong types at every key path, deep nesting, alias bombs, non-UTF-8 text.

A seeded generator (no extra dependency): the same cases every run."""

from __future__ import annotations

import copy
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestrator.manifest import Manifest, ManifestError, load_manifest

REPO = Path(__file__).resolve().parents[1]
VALID: dict[str, Any] = {
    "run": {"name": "f", "setup": "qwen", "output_dir": "runs", "data_dir": None},
    "tasks": {"mmlu": {"limit": 5, "shots": 0, "max_tokens": 8, "subjects": ["anatomy"]}, "ifeval": {}},
    "generation": {"temperature": 0, "seed": 1, "stream": True},
    "client": {"concurrency": 4, "retries": 1, "retry_budget": 5.0, "error_threshold": 0.1},
    "targets": [
        {"name": "a", "model": "M", "quantization": "BF16", "backend": "vllm", "url": "http://127.0.0.1:1"},
        {"name": "b", "model": "M", "quantization": "Q8_0", "backend": "llamacpp",
         "launch": {"model_path": "x.gguf", "n_ctx": 512, "extra_args": ["--a"]}},
    ],
}  # fmt: skip
BOUND_S = 5.0  # per input: a hang or an exponential blow-up fails, a busy CI machine does not


def _key_paths(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [path]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _key_paths(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _key_paths(v, (*path, i))
    return out


def _random_value(rng: random.Random, depth: int = 0) -> Any:
    kinds = ["int", "float", "str", "bool", "none", "list", "dict", "big", "neg"]
    kind = rng.choice(kinds if depth < 3 else kinds[:5])
    if kind == "int":
        return rng.randint(-(10**6), 10**6)
    if kind == "float":
        return rng.choice([rng.uniform(-1e9, 1e9), float("nan"), float("inf")])
    if kind == "str":
        return "".join(rng.choice("ab:{}[]-*&!%@ \u00e9\u4e2d\n") for _ in range(rng.randint(0, 12)))
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "none":
        return None
    if kind == "big":
        return 10**40
    if kind == "neg":
        return -1
    if kind == "list":
        return [_random_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    return {str(_random_value(rng, 3)): _random_value(rng, depth + 1) for _ in range(rng.randint(0, 3))}


def _cases() -> list[tuple[str, bytes]]:
    rng = random.Random(20261201)
    cases: list[tuple[str, bytes]] = [("valid", yaml.safe_dump(VALID).encode())]
    for i in range(60):
        cases.append((f"bytes-{i}", bytes(rng.randrange(256) for _ in range(rng.randint(0, 400)))))
    for i in range(60):
        cases.append((f"yaml-{i}", yaml.safe_dump(_random_value(rng)).encode()))
    for path in _key_paths(VALID)[1:]:
        for j in range(3):
            doc = copy.deepcopy(VALID)
            node = doc
            for k in path[:-1]:
                node = node[k]
            node[path[-1]] = _random_value(rng)
            cases.append((f"wrong-{'.'.join(map(str, path))}-{j}", yaml.safe_dump(doc).encode()))
    laughs = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
        f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n"
        for i in range(9)
    )
    cases += [
        ("billion-laughs", laughs.encode()),
        ("deep-lists", b"[" * 5000 + b"]" * 5000),
        ("deep-maps", b"".join(b"  " * i + b"k:\n" for i in range(2000))),
        ("latin-1", "run: {name: caf\u00e9}\n".encode("latin-1")),
        ("nul", b"run: {name: a}\x00\n"),
        ("utf-16", "run: {name: a}\n".encode("utf-16")),
        ("huge", b"# " + b"x" * (2 << 20)),
        ("empty", b""),
        ("scalar", b"42\n"),
        ("list", b"- a\n- b\n"),
        ("tagged", b"run: !!python/object/apply:os.system ['true']\n"),
    ]
    return cases


CASES = _cases()


@pytest.mark.parametrize(("name", "data"), CASES, ids=[n for n, _ in CASES])
def test_any_manifest_is_a_manifest_or_one_error(tmp_path: Path, name: str, data: bytes) -> None:
    path = tmp_path / "m.yaml"
    path.write_bytes(data)
    started = time.monotonic()
    try:
        result = load_manifest(path)
    except ManifestError as exc:
        message = str(exc)
        assert message and "\n" not in message.strip(), message
    else:
        assert isinstance(result, Manifest)
    assert time.monotonic() - started < BOUND_S, name


@pytest.mark.parametrize("name", ["billion-laughs", "latin-1", "bytes-3", "deep-lists"])
def test_the_cli_says_one_line_and_exits_2(tmp_path: Path, name: str) -> None:
    path = tmp_path / "m.yaml"
    path.write_bytes(dict(CASES)[name])
    done = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "validate", str(path)],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert len([ln for ln in done.stderr.splitlines() if ln.strip()]) == 1, done.stderr
