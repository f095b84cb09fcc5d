"""`sftlab serve` on a real 127.0.0.1 socket: the official openai client, streaming, bad requests, and the
HTTP generation backend (retries, errors) against real local servers."""

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
import torch
import uvicorn
from transformers import AutoModelForCausalLM

from sftlab.curate.distill import distill
from sftlab.data.schema import Conversation, Turn
from sftlab.generation import GenerationError, SamplingParams, TransformersGenerator
from sftlab.generation.openai_http import OpenAIHTTPGenerator
from sftlab.serve.server import create_app
from sftlab.templates.chat_templates import ensure_chat_template

MSGS = [{"role": "user", "content": "Hello, who are you?"}]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def local_gen(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    ensure_chat_template(tok, "chatml")
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    return TransformersGenerator(model, tok, batch_size=4, model_id="tiny")


def _start(app) -> tuple[str, uvicorn.Server]:
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    threading.Thread(target=server.run, daemon=True).start()
    deadline = time.time() + 20
    while not server.started and time.time() < deadline:
        time.sleep(0.02)
    return f"http://127.0.0.1:{port}/v1", server


@pytest.fixture(scope="module")
def server(local_gen):
    url, srv = _start(create_app(local_gen, "tiny", max_tokens_limit=64))
    yield url
    srv.should_exit = True


def test_openai_client_chat_and_models(server, local_gen):
    from openai import OpenAI

    client = OpenAI(base_url=server, api_key="unused")
    assert [m.id for m in client.models.list().data] == ["tiny"]
    r = client.chat.completions.create(model="tiny", messages=MSGS, max_tokens=8, temperature=0)
    expected = local_gen.generate([MSGS], SamplingParams(max_new_tokens=8))[0][0]
    assert r.choices[0].message.content == expected.text
    assert r.choices[0].finish_reason == ("stop" if expected.finished else "length")
    assert r.usage.completion_tokens == expected.n_tokens and r.usage.prompt_tokens > 0
    r2 = client.chat.completions.create(model="tiny", messages=MSGS, max_tokens=4, temperature=1.0, n=3, seed=1)
    assert len(r2.choices) == 3


def test_openai_client_streaming_matches_non_streaming(server):
    from openai import OpenAI

    client = OpenAI(base_url=server, api_key="unused")
    full = client.chat.completions.create(model="tiny", messages=MSGS, max_tokens=10, temperature=0)
    chunks = list(client.chat.completions.create(model="tiny", messages=MSGS, max_tokens=10, temperature=0,
                                                 stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip() == full.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


@pytest.mark.parametrize(("body", "status", "param"), [
    (b"{not json", 400, None),
    (json.dumps({"model": "tiny"}).encode(), 400, "messages"),
    (json.dumps({"messages": []}).encode(), 400, "messages"),
    (json.dumps({"messages": [{"role": "wizard", "content": "x"}]}).encode(), 400, "messages[0].role"),
    (json.dumps({"messages": [{"role": "user", "content": 5}]}).encode(), 400, "messages[0].content"),
    (json.dumps({"messages": MSGS, "max_tokens": 10_000}).encode(), 400, "max_tokens"),
    (json.dumps({"messages": MSGS, "temperature": -1}).encode(), 400, "temperature"),
    (json.dumps({"messages": MSGS, "n": 100}).encode(), 400, "n"),
    (json.dumps({"messages": MSGS, "stream": True, "n": 2}).encode(), 400, "n"),
    (b"x" * 2_000_000, 413, None),
])
def test_bad_requests_get_clear_4xx(server, body, status, param):
    r = httpx.post(f"{server}/chat/completions", content=body, headers={"content-type": "application/json"})
    assert r.status_code == status
    err = r.json()["error"]
    assert err["message"] and err["param"] == param


def test_api_key_required_when_configured(local_gen):
    from openai import AuthenticationError, OpenAI

    url, srv = _start(create_app(local_gen, "tiny", api_key="s3cret"))
    try:
        with pytest.raises(AuthenticationError):
            OpenAI(base_url=url, api_key="wrong").models.list()
        assert OpenAI(base_url=url, api_key="s3cret").models.list().data[0].id == "tiny"
    finally:
        srv.should_exit = True


def test_http_backend_equals_local_and_distills(server, local_gen, tmp_path, monkeypatch):
    monkeypatch.setenv("SFTLAB_TEST_KEY", "k")
    remote = OpenAIHTTPGenerator(server, "tiny", api_key_env="SFTLAB_TEST_KEY", concurrency=2)
    prompts = [MSGS, [{"role": "user", "content": "Name a fruit."}]]
    params = SamplingParams(max_new_tokens=6)
    assert [g[0].text for g in remote.generate(prompts, params)] == \
           [g[0].text for g in local_gen.generate(prompts, params)]
    convs = [Conversation([Turn("user", f"Question {i}")], id=str(i)) for i in range(5)]
    stats = distill(convs, remote, tmp_path / "d.jsonl", params, keep_unfinished=True)
    assert stats.records == 5 and json.loads((tmp_path / "d.jsonl").read_text().splitlines()[0])["meta"][
        "generator"] == "tiny"


class _Flaky(BaseHTTPRequestHandler):
    plan: list = []
    calls = 0

    def do_POST(self):  # noqa: N802
        type(self).calls += 1
        status = self.plan.pop(0) if self.plan else 200
        request = self.rfile.read(int(self.headers["content-length"]))
        if b"BAD" in request:  # a prompt this endpoint always answers with garbage
            status = "garbage"
        body = b"garbage" if status == "garbage" else json.dumps({"choices": [{"index": 0, "finish_reason": "stop",
                                                                                "message": {"content": "ok"}}],
                                                                   "usage": {"completion_tokens": 1}}).encode()
        self.send_response(200 if status == "garbage" else status)
        self.send_header("content-type", "application/json")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass


@pytest.fixture()
def flaky():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Flaky)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    _Flaky.calls = 0
    yield srv, f"http://127.0.0.1:{srv.server_address[1]}/v1"
    srv.shutdown()


def test_http_backend_retries_429_and_5xx(flaky):
    srv, url = flaky
    _Flaky.plan = [429, 503, 500]
    gen = OpenAIHTTPGenerator(url, "m", api_key_env=None, backoff=0.01, max_retries=3)
    assert gen.generate([MSGS])[0][0].text == "ok" and _Flaky.calls == 4
    _Flaky.plan = [503] * 5
    with pytest.raises(GenerationError, match="after 3 attempts"):
        OpenAIHTTPGenerator(url, "m", api_key_env=None, backoff=0.01, max_retries=2).generate([MSGS])
    _Flaky.plan = [400]
    with pytest.raises(GenerationError, match="answered 400"):
        gen.generate([MSGS])
    _Flaky.plan = ["garbage"]
    with pytest.raises(GenerationError, match="malformed"):
        gen.generate([MSGS])


def test_garbage_for_one_prompt_is_a_counted_skip_and_down_endpoint_is_a_clear_error(flaky, tmp_path):
    srv, url = flaky
    gen = OpenAIHTTPGenerator(url, "m", api_key_env=None, backoff=0.01, max_retries=0, concurrency=1)
    convs = [Conversation([Turn("user", q)], id=q) for q in ("Q0", "BAD1", "Q2")]
    stats = distill(convs, gen, tmp_path / "d.jsonl", SamplingParams(), batch_size=3)
    assert stats.skipped["generation failed"] == 1 and stats.records == 2
    down = OpenAIHTTPGenerator("http://127.0.0.1:9/v1", "m", api_key_env=None, backoff=0.01, max_retries=1)
    with pytest.raises(GenerationError, match="re-run the same command to resume"):
        distill(convs, down, tmp_path / "e.jsonl", SamplingParams())


def test_chat_loop_commands_and_streaming(local_gen):
    from sftlab.serve.chat import chat_loop

    lines = iter(["Hi", "/system Be brief.", "Who are you?", "/reset", "Again", "/exit", "never read"])
    out: list[str] = []
    conv = chat_loop(local_gen, lambda prompt: next(lines), out.append, max_new_tokens=5)
    assert [m["role"] for m in conv] == ["system", "user", "assistant"] and conv[1]["content"] == "Again"
    expected = local_gen.generate([conv[:2]], SamplingParams(max_new_tokens=5))[0][0].text
    assert conv[2]["content"] == expected  # streamed reply == batched greedy reply
    text = "".join(out)
    assert "conversation reset" in text and "system prompt set" in text


def test_chat_command_reads_stdin(tiny_model_dir):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "sftlab.cli", "chat", str(tiny_model_dir), "--max-new-tokens", "3"],
                       input="hello\n/exit\n", capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("you> ") == 2 and "assistant> " in r.stdout
