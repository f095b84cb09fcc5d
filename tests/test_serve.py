"""`sftlab serve` on a real 127.0.0.1 socket: the official openai client, streaming, bad requests, and the
HTTP generation backend (retries, errors) against real local servers."""

import json
import socket
import threading
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
from sftlab.testing import serve_in_thread

MSGS = [{"role": "user", "content": "Hello, who are you?"}]


@pytest.fixture(scope="module")
def local_gen(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    ensure_chat_template(tok, "chatml")
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    return TransformersGenerator(model, tok, batch_size=4, model_id="tiny")


def _start(app) -> tuple[str, uvicorn.Server]:
    url, server = serve_in_thread(app)
    return url + "/v1", server


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
    # other wrong types: already refused before the hardening; kept here as a regression guard
    (json.dumps({"messages": MSGS, "max_tokens": "10"}).encode(), 400, "max_tokens"),
    (json.dumps({"messages": MSGS, "temperature": "hot"}).encode(), 400, "temperature"),
    (json.dumps({"messages": "hi"}).encode(), 400, "messages"),
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
    assert conv[2]["content"].strip() == expected  # streamed reply == batched greedy reply (which is stripped)
    text = "".join(out)
    assert "conversation reset" in text and "system prompt set" in text


def test_chat_keeps_the_reply_exactly_as_generated(tiny_model_dir):
    """A reply that is indented code ending in a newline: the history (the next turn's prompt) holds it exactly as
    the model generated it, and the terminal showed it so. Before: the history held it stripped, "return a + b",
    so the next prompt was a conversation the model never had. The tiny model is first taught the reply."""
    from transformers import AutoTokenizer

    from sftlab.serve.chat import chat_loop
    from sftlab.templates.masking import tokenize_conversation

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    ensure_chat_template(tok, "chatml")
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    reply = "    return a + b\n"
    ex = tokenize_conversation(tok, Conversation([Turn("user", "def add(a, b):"), Turn("assistant", reply)]))
    ids, labels = torch.tensor([ex.input_ids]), torch.tensor([ex.labels])
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(60):
        opt.zero_grad()
        model(input_ids=ids, labels=labels).loss.backward()
        opt.step()
    gen = TransformersGenerator(model.eval(), tok, model_id="taught")
    lines, out = iter(["def add(a, b):", "Thanks", "/exit"]), []
    conv = chat_loop(gen, lambda prompt: next(lines), out.append, max_new_tokens=16)
    assert conv[1] == {"role": "assistant", "content": reply}  # was "return a + b"
    assert "assistant> " + reply + "assistant> " in "".join(out)  # streamed as generated, no blank line added
    assert [m["content"] for m in conv[:3]] == ["def add(a, b):", reply, "Thanks"]


def test_chat_command_reads_stdin(tiny_model_dir):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "sftlab.cli", "chat", str(tiny_model_dir), "--max-new-tokens", "3"],
                       input="hello\n/exit\n", capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("you> ") == 2 and "assistant> " in r.stdout


@pytest.mark.parametrize("stdin_errors", [None, "utf-8:strict"], ids=["locale_default", "strict"])
def test_chat_command_survives_stdin_that_is_not_utf8(tiny_model_dir, stdin_errors):
    """Before: a Latin-1 byte piped in ended the chat with a traceback (a lone surrogate the tokenizer refused under
    the C.UTF-8 locale's surrogateescape, a UnicodeDecodeError under strict decoding)."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "PYTHONIOENCODING"}
    if stdin_errors:
        env["PYTHONIOENCODING"] = stdin_errors
    r = subprocess.run([sys.executable, "-m", "sftlab.cli", "chat", str(tiny_model_dir), "--max-new-tokens", "3"],
                       input=b"caf\xe9 cr\xe8me\nhello\n/exit\n", capture_output=True, timeout=120, env=env)
    out = r.stdout.decode(errors="replace")
    assert r.returncode == 0 and b"Traceback" not in r.stderr, r.stderr.decode(errors="replace")[-800:]
    assert out.count("you> ") == 3 and out.count("assistant> ") == 2


@pytest.mark.parametrize("option", [["--max-new-tokens", "0"], ["--max-new-tokens", "-3"], ["--temperature", "-1"],
                                    ["--temperature", "nan"], ["--temperature", "inf"]],
                         ids=["max_new_tokens_0", "max_new_tokens_negative", "temperature_negative",
                              "temperature_nan", "temperature_inf"])
def test_chat_command_refuses_bad_options(tiny_model_dir, option):
    """Before: --max-new-tokens 0/-3 was a transformers ValueError traceback after loading the model; a negative
    or NaN temperature silently chatted greedily."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "sftlab.cli", "chat", str(tiny_model_dir), *option],
                       input="hello\n/exit\n", capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, (r.stdout, r.stderr)
    out = r.stdout + r.stderr
    assert out.startswith(f"error: {option[0]} ") and "Traceback" not in out and "you> " not in out


# ---------------------------------------------------------------------------------------------- hostile requests

def _raw(text: str) -> bytes:
    return text.encode()


HOSTILE = [  # (case, body, param): each was a 500, a silent accept or a stream before the server was hardened
    ("text part is a number", {"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]},
     "messages[0].content[0].text"),
    ("text part without text", {"messages": [{"role": "user", "content": [{"type": "text"}]}]},
     "messages[0].content[0].text"),
    ("content part is a string", {"messages": [{"role": "user", "content": ["hi"]}]}, "messages[0].content[0]"),
    ("image part to a text model", {"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "http://127.0.0.1/x.png"}}]}]}, "messages[0].content[0].type"),
    ('stream is the string "false"', {"messages": MSGS, "stream": "false"}, "stream"),
    ("stream is 1", {"messages": MSGS, "stream": 1}, "stream"),
    ("stop strings (not supported)", {"messages": MSGS, "stop": ["\n"]}, "stop"),
    ("tools (not supported)", {"messages": MSGS, "tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
    ("json response_format", {"messages": MSGS, "response_format": {"type": "json_object"}}, "response_format"),
    ("logprobs", {"messages": MSGS, "logprobs": True}, "logprobs"),
    ("tool_calls in a message", {"messages": [{"role": "assistant", "content": "x", "tool_calls": [
        {"id": "1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}, *MSGS]},
     "messages[0].tool_calls"),
    ("stream_options without stream", {"messages": MSGS, "stream_options": {"include_usage": True}}, "stream_options"),
    ("max_tokens 1e400 (Infinity)", _raw('{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1e400}'),
     "max_tokens"),
    ("max_tokens NaN", _raw('{"messages": [{"role": "user", "content": "hi"}], "max_tokens": NaN}'), "max_tokens"),
    ("JSON nested 100k levels deep", _raw("[" * 100_000 + "]" * 100_000), None),
    ("lone surrogate in content", _raw('{"messages": [{"role": "user", "content": "caf\\ud800"}]}'),
     "messages[0].content"),
    ("lone surrogate in a text part", _raw('{"messages": [{"role": "system", "content": "x"}, {"role": "user", '
                                           '"content": [{"type": "text", "text": "\\udfff"}]}], "stream": true}'),
     "messages[1].content"),
]


@pytest.mark.parametrize(("case", "body", "param"), HOSTILE, ids=[c[0] for c in HOSTILE])
def test_hostile_requests_get_an_openai_style_400(server, case, body, param):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = httpx.post(f"{server}/chat/completions", content=raw, headers={"content-type": "application/json"},
                   timeout=30)
    assert r.status_code == 400, (case, r.status_code, r.text[:200])
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["param"] == param and err["message"]


def test_prompt_longer_than_the_context_window_is_a_400_naming_both_lengths(server, local_gen):
    window = local_gen.context_window  # 512 for the tiny model
    too_long = [{"role": "user", "content": "Paris " * 600}]
    r = httpx.post(f"{server}/chat/completions", json={"messages": too_long, "max_tokens": 4}, timeout=30)
    err = r.json()["error"]
    assert r.status_code == 400 and err["code"] == "context_length_exceeded" and err["param"] == "messages"
    assert f"{len(local_gen.encode(too_long))} tokens" in err["message"] and f"{window} tokens" in err["message"]

    nearly_full = [{"role": "user", "content": "Paris " * 470}]  # 483 tokens: 29 left, the request asks for 64
    room = window - len(local_gen.encode(nearly_full))
    r = httpx.post(f"{server}/chat/completions", json={"messages": nearly_full, "max_tokens": 64}, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["param"] == "max_tokens"
    assert f"at most {room} new tokens" in r.json()["error"]["message"]
    # without an explicit max_tokens the default budget shrinks to the room left
    usage = httpx.post(f"{server}/chat/completions", json={"messages": nearly_full}, timeout=60).json()["usage"]
    assert usage["total_tokens"] <= window


def test_n_greedy_replies_are_n_copies_of_the_greedy_reply(server, local_gen):
    r = httpx.post(f"{server}/chat/completions", json={"messages": MSGS, "n": 2, "temperature": 0, "max_tokens": 6},
                   timeout=30)
    assert r.status_code == 200, r.text
    expected = local_gen.generate([MSGS], SamplingParams(max_new_tokens=6))[0][0]
    assert [c["message"]["content"] for c in r.json()["choices"]] == [expected.text] * 2
    assert r.json()["usage"]["completion_tokens"] == 2 * expected.n_tokens


def test_stream_usage_chunk_when_asked(server):
    from openai import OpenAI

    chunks = list(OpenAI(base_url=server, api_key="unused").chat.completions.create(
        model="tiny", messages=MSGS, max_tokens=5, temperature=0, stream=True, stream_options={"include_usage": True}))
    assert chunks[-1].usage.completion_tokens <= 5 and chunks[-1].usage.prompt_tokens > 0


# gemma-3's own chat template refuses roles that do not alternate, with jinja's raise_exception
STRICT_TEMPLATE = (
    "{%- for message in messages -%}{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{%- endif -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)


def test_messages_the_chat_template_refuses_are_a_400(tiny_model_dir, local_gen):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.chat_template = STRICT_TEMPLATE
    url, srv = _start(create_app(TransformersGenerator(local_gen.model, tok, model_id="tiny"), "tiny"))
    try:
        body = {"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], "max_tokens": 2}
        r = httpx.post(f"{url}/chat/completions", json=body, timeout=20)
        assert r.status_code == 400 and r.json()["error"]["param"] == "messages"
        assert "roles must alternate" in r.json()["error"]["message"]
        body["messages"] = body["messages"][:1]
        assert httpx.post(f"{url}/chat/completions", json=body, timeout=20).status_code == 200
    finally:
        srv.should_exit = True


class _BrokenModel(torch.nn.Module):
    """The tiny model's weights, but generation fails the way a device error would (an engine fault double)."""

    def __init__(self, real) -> None:
        super().__init__()
        self.real, self.config = real, real.config

    def generate(self, **kwargs):
        raise RuntimeError("simulated device failure in /secret/path")


def test_engine_failure_is_an_openai_style_500_and_the_server_keeps_serving(local_gen):
    broken = TransformersGenerator(_BrokenModel(local_gen.model), local_gen.tokenizer, model_id="tiny")
    url, srv = _start(create_app(broken, "tiny"))
    try:
        r = httpx.post(f"{url}/chat/completions", json={"messages": MSGS, "max_tokens": 4}, timeout=20)
        assert r.status_code == 500 and r.json()["error"]["type"] == "server_error"
        assert "secret" not in r.text and "Traceback" not in r.text
        with httpx.stream("POST", f"{url}/chat/completions", json={"messages": MSGS, "stream": True},
                          timeout=20) as s:  # before: the stream hung forever when the engine failed
            lines = [x for x in s.iter_lines() if x]
        assert lines[-1] == "data: [DONE]" and json.loads(lines[-2][6:])["error"]["type"] == "server_error"
        assert "secret" not in "".join(lines)
        assert httpx.get(f"{url}/models", timeout=5).status_code == 200
    finally:
        srv.should_exit = True


def test_api_key_compared_in_constant_time_and_health_needs_no_key(local_gen, monkeypatch):
    import hmac

    compared = []
    real_compare = hmac.compare_digest
    monkeypatch.setattr(hmac, "compare_digest", lambda a, b: compared.append(1) or real_compare(a, b))
    url, srv = _start(create_app(local_gen, "tiny", api_key="s3cret"))
    try:
        r = httpx.get(f"{url}/models", headers={"authorization": "Bearer s3cre"}, timeout=5)
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error" and compared
        assert httpx.get(f"{url}/models", headers={"authorization": "Bearer s3cret"}, timeout=5).status_code == 200
        assert httpx.get(f"{url.removesuffix('/v1')}/health", timeout=5).json()["status"] == "ok"
        assert httpx.get(f"{url}/nope", headers={"authorization": "Bearer s3cret"}, timeout=5).json()["error"]
    finally:
        srv.should_exit = True


@pytest.fixture()
def busy_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


@pytest.mark.parametrize(("args", "message"), [
    (["--port", "99999"], "--port 99999: a port must be between 1 and 65535"),
    (["--port", "BUSY"], "already in use"),
    (["--batch-size", "0", "--port", "BUSY"], "--batch-size 0: must be an integer of at least 1"),
    (["--max-queue", "0", "--port", "BUSY"], "--max-queue 0: must be an integer of at least 1"),
    (["--max-tokens", "0", "--port", "BUSY"], "--max-tokens 0: must be an integer of at least 1"),
    (["--host", "no-such-host.invalid"], "--host no-such-host.invalid: cannot resolve"),
])
def test_serve_refuses_bad_options_before_loading_the_model(tiny_model_dir, busy_port, args, message):
    """Options are checked and the port bound first (BUSY: a port in use, so nothing here can start serving)."""
    from typer.testing import CliRunner

    from sftlab.cli import app

    args = [str(busy_port) if a == "BUSY" else a for a in args]
    r = CliRunner().invoke(app, ["serve", str(tiny_model_dir), *args])
    assert r.exit_code == 2 and message in r.output and "Traceback" not in r.output, r.output


def test_chat_refuses_a_conversation_longer_than_the_context_window(local_gen):
    from sftlab.serve.chat import chat_loop

    lines = iter(["Paris " * 600, "Hi", "/exit"])
    out: list[str] = []
    conv = chat_loop(local_gen, lambda prompt: next(lines), out.append, max_new_tokens=3)
    assert "context window is 512" in "".join(out)
    assert [m["role"] for m in conv] == ["user", "assistant"] and conv[0]["content"] == "Hi"


def test_chat_replies_within_the_context_window_and_reads_slash_words_as_text(local_gen):
    from sftlab.serve.chat import chat_loop

    long = "Paris " * 487
    assert 490 < len(local_gen.encode([{"role": "user", "content": long}])) < 512
    lines = iter([long, "/reset", "/systematic errors?", "/exit"])
    conv = chat_loop(local_gen, lambda prompt: next(lines), lambda text: None, max_new_tokens=100)
    assert conv[0] == {"role": "user", "content": "/systematic errors?"}  # was: the system prompt "atic errors?"
    steps: list[int] = []  # tokens fed per forward: the prompt, then one per new token
    hook = local_gen.model.register_forward_pre_hook(
        lambda _m, args, kwargs: steps.append(kwargs["input_ids"].shape[1]), with_kwargs=True)
    lines = iter([long, "/exit"])
    try:
        chat_loop(local_gen, lambda prompt: next(lines), lambda text: None, max_new_tokens=100)
    finally:
        hook.remove()
    assert steps[0] > 490 and steps[0] + len(steps) - 1 <= 512  # was: 100 new tokens, to position ~600


def test_chat_engine_failure_is_raised_not_a_hang(local_gen):
    from sftlab.serve.chat import chat_loop

    broken = TransformersGenerator(_BrokenModel(local_gen.model), local_gen.tokenizer, model_id="tiny")
    lines, outcome = iter(["Hi", "/exit"]), {}

    def run() -> None:
        try:
            chat_loop(broken, lambda prompt: next(lines), lambda text: None)
        except RuntimeError as e:
            outcome["error"] = e

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout=30)  # before: the reader waited forever on a streamer whose generating thread had died
    assert not thread.is_alive() and "simulated" in str(outcome["error"])
