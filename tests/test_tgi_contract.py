"""TGI native adapter against a fake TGI validated by TGI's OpenAPI document (contract tests)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer
from jsonschema import ValidationError

from orchestrator.backends import ChatRequest, FatalError, TransientError
from orchestrator.backends.http import make_session
from orchestrator.backends.tgi import ChatTemplate, TGINative
from orchestrator.manifest import parse_manifest
from orchestrator.runner import Runner
from orchestrator.store import RunStore
from orchestrator.tasks import build_task
from tests.support.fake_tgi import FakeTGI, OpenAPI
from tests.support.servers import vllm_python

CHATS: list[tuple[tuple[str, str], ...]] = [
    (("user", "Hi"),),
    (("system", "You are terse."), ("user", "2+2?")),
    (("user", "Q1"), ("assistant", "A"), ("user", "Q2"), ("assistant", "B"), ("user", "Q3 答案：")),
]


@pytest.fixture(scope="module")
def spec(data_dir: Path) -> OpenAPI:
    return OpenAPI(data_dir.parent / "specs" / "text-generation-inference" / "openapi.json")


@pytest.fixture(scope="module")
def template(data_dir: Path) -> ChatTemplate:
    return ChatTemplate.load(str(data_dir / "qwen2-tokenizer"))


@pytest.fixture
async def tgi(spec: OpenAPI, template: ChatTemplate) -> AsyncIterator[tuple[TGINative, FakeTGI, str]]:
    fake = FakeTGI(spec)
    server = TestServer(fake.app(), host="127.0.0.1")
    await server.start_server()
    url = str(server.make_url("")).rstrip("/")
    backend = TGINative(url, make_session(4, 10.0), template)
    await backend.start()
    yield backend, fake, url
    await backend.close()
    await server.close()


REQ = ChatRequest((("user", "Which option?"),), max_tokens=4, seed=7, stop=("\n\n",))


async def test_stream_request_and_reply_follow_the_contract(tgi: tuple[TGINative, FakeTGI, str]) -> None:
    backend, fake, _ = tgi
    c = await backend.generate(REQ)
    sent = fake.requests[-1]
    # TGI samples when parameters are absent: they are always explicit, and greedy.
    assert sent["parameters"]["do_sample"] is False and sent["parameters"]["details"] is True
    assert sent["parameters"]["max_new_tokens"] == 4 and sent["parameters"]["seed"] == 7
    assert sent["parameters"]["stop"] == ["\n\n"]
    assert sent["inputs"].endswith("<|im_start|>user\nWhich option?<|im_end|>\n<|im_start|>assistant\n")
    assert c.text == "The answer is B"
    assert (c.prompt_tokens, c.completion_tokens, c.token_source) == (42, 4, "tgi-details")
    assert c.finish_reason == "length" and len(c.stamps.chunks) == 4  # one token per event
    assert (await backend.describe())["info"]["version"] == "3.3.6" and backend.model == "Qwen/Qwen2-0.5B-Instruct"
    assert await backend.server_version() == "3.3.6"


async def test_special_end_token_is_not_content(tgi: tuple[TGINative, FakeTGI, str]) -> None:
    backend, fake, _ = tgi
    fake.tokens = ["B"]
    c = await backend.generate(ChatRequest((("user", "x"),), max_tokens=8, seed=1))
    assert c.text == "B" and len(c.stamps.chunks) == 1 and c.completion_tokens == 2
    assert c.finish_reason == "eos_token"


async def test_non_stream_uses_details_and_headers(tgi: tuple[TGINative, FakeTGI, str]) -> None:
    backend, _, _ = tgi
    c = await backend.generate(ChatRequest((("user", "x"),), max_tokens=3, seed=1, stream=False))
    assert c.text == "The answer is" and c.completion_tokens == 3 and c.prompt_tokens == 42
    assert c.raw["headers"]["x-generated-tokens"] == "3"


@pytest.mark.parametrize(
    ("status", "error_type", "kind"),
    [(429, "overloaded", TransientError), (422, "validation", FatalError), (424, "generation", FatalError)],
)
async def test_error_types_map_onto_the_error_tree(
    tgi: tuple[TGINative, FakeTGI, str], status: int, error_type: str, kind: type[Exception]
) -> None:
    backend, fake, _ = tgi
    for stream in (True, False):
        fake.fail = [(status, error_type)]
        with pytest.raises(kind, match=error_type):
            await backend.generate(ChatRequest((("user", "x"),), max_tokens=3, seed=1, stream=stream))


async def test_runner_backs_off_when_overloaded(
    tgi: tuple[TGINative, FakeTGI, str], tmp_path: Path, data_dir: Path
) -> None:
    _, fake, url = tgi
    fake.fail = [(429, "overloaded")] * 3
    m = parse_manifest(
        {
            "run": {"name": "t", "output_dir": str(tmp_path)},
            "tasks": {"ceval": {"limit": 60}},
            "client": {"concurrency": 1, "retries": 3},
            "targets": [
                {
                    "name": "tgi",
                    "model": "Qwen2-0.5B-Instruct",
                    "quantization": "BF16",
                    "backend": "tgi",
                    "url": url,
                    "tokenizer": str(data_dir / "qwen2-tokenizer"),
                }
            ],
        }
    )
    store = RunStore(tmp_path / "run")
    outcomes = await Runner(m, [build_task("ceval", data_dir, limit=60)], store, retry_wait_max=0.01).run()
    store.close()
    assert outcomes[0].errors == 0 and outcomes[0].server["info"]["router"] == "text-generation-router"
    records = store.records("tgi", "ceval", "qwen@2")
    assert len(records) == 60 and records[0].attempts == 4 and records[0].token_source == "tgi-details"
    assert all(r.request["parameters"]["do_sample"] is False for r in records)


def test_schema_drift_breaks_the_contract(spec: OpenAPI) -> None:
    with pytest.raises(ValidationError):
        spec.validate("GenerateRequest", {"parameters": {"do_sample": False}})  # no inputs
    with pytest.raises(ValidationError):
        spec.validate("StreamResponse", {"index": 0, "token": {"id": 1, "text": "a"}})  # token lacks fields
    assert spec.response_schema("/generate_stream", 200) == "StreamResponse"
    assert spec.response_schema("/generate", 429) == "ErrorResponse"


@pytest.mark.real_server  # runs transformers from the vLLM venv (scripts/setup_vllm.sh installs it)
def test_chat_template_equals_transformers(template: ChatTemplate, data_dir: Path) -> None:
    """The prompt sent to /generate equals what transformers' apply_chat_template builds (vLLM's chat path)."""
    script = (
        "import json, sys\n"
        "from transformers import AutoTokenizer\n"
        "tok = AutoTokenizer.from_pretrained(sys.argv[1])\n"
        "chats = json.loads(sys.stdin.read())\n"
        "print(json.dumps([tok.apply_chat_template([{'role': r, 'content': c} for r, c in chat],"
        " tokenize=False, add_generation_prompt=True) for chat in chats]))\n"
    )
    done = subprocess.run(
        [vllm_python(), "-c", script, str(data_dir / "qwen2-tokenizer")],
        input=json.dumps(CHATS),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    reference: list[Any] = json.loads(done.stdout.strip().splitlines()[-1])
    ours = [template.render(chat) for chat in CHATS]
    assert ours == reference
    assert ours[0].startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n")


@pytest.mark.parametrize("stream", [True, False])
async def test_top_n_tokens_come_back_as_logprobs(tgi: tuple[TGINative, FakeTGI, str], stream: bool) -> None:
    backend, fake, _ = tgi
    c = await backend.generate(ChatRequest((("user", "x"),), max_tokens=3, seed=1, stream=stream, logprobs=4))
    assert fake.requests[-1]["parameters"]["top_n_tokens"] == 4
    assert c.logprobs is not None and [p[0] for p in c.logprobs] == ["The", " answer", " is"]
    assert all(p[1] == -0.1 and len(p[2]) == 4 and p[2][0][:2] == [p[0], -0.1] for p in c.logprobs)
    # TGI's token ids are kept, the chosen token's and each alternative's (KL matches by id).
    assert [p[3] for p in c.logprobs] == [p[2][0][2] for p in c.logprobs] == [100, 101, 102]
    plain = await backend.generate(ChatRequest((("user", "x"),), max_tokens=3, seed=1, stream=stream))
    assert "top_n_tokens" not in fake.requests[-1]["parameters"] and plain.logprobs is None


async def test_a_cap_below_the_k_asked_is_found_and_said_at_start(tgi: tuple[TGINative, FakeTGI, str]) -> None:
    from orchestrator.serving import probe_logprobs

    backend, fake, url = tgi
    assert await probe_logprobs(backend, 5, seed=1) == (5, None)
    got, why = await probe_logprobs(backend, 20, seed=1)  # TGI refuses more than --max-top-n-tokens (5)
    assert got == 5 and why is not None and "top-5" in why and "top-20" in why and url not in why
    fake.max_top_n_tokens = 0  # logprobs refused altogether
    got, why = await probe_logprobs(backend, 3, seed=1)
    assert got == 0 and why is not None and "refuses logprobs" in why and "top_n_tokens" in why


def test_tgi_chat_logprobs_follow_tgi_s_chat_contract(spec: OpenAPI) -> None:
    from orchestrator.backends.logprobs import from_openai
    from orchestrator.backends.openai import TGIChat

    backend = TGIChat("http://127.0.0.1:1", session=None, model="tgi")  # type: ignore[arg-type]  # body only
    body = backend.build_body(ChatRequest((("user", "x"),), max_tokens=3, seed=1, logprobs=5))
    assert body["logprobs"] is True and body["top_logprobs"] == 5
    spec.validate("ChatRequest", body)  # TGI's chat route takes it (top_logprobs 0..5 there)
    reply = {"content": [{"token": "B", "logprob": -0.2, "top_logprobs": [{"token": "B", "logprob": -0.2},
                                                                        {"token": "A", "logprob": -1.7}]}]}  # fmt: skip
    spec.validate("ChatCompletionLogprobs", reply)
    assert from_openai(reply["content"]) == [["B", -0.2, [["B", -0.2], ["A", -1.7]]]]
