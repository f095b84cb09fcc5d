"""`curate distill` against several OpenAI-compatible endpoints: two real `sftlab serve` processes on the tiny
model, one killed mid-run; least-loaded dispatch; failing endpoints (refused, 5xx, timeout) cost nothing but a
retry elsewhere; only all endpoints down stops the run. The output is the same bytes whichever endpoint served."""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from sftlab.curate.distill import distill
from sftlab.curate.runner import engine_id
from sftlab.data.schema import Conversation, Turn
from sftlab.generation import GenerationError, SamplingParams
from sftlab.generation.endpoints import EndpointPool
from sftlab.generation.openai_http import OpenAIHTTPGenerator

N_PROMPTS = 24


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(model_dir) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "sftlab", "serve", str(model_dir), "--port", str(port),
                             "--name", "tiny", "--max-tokens", "64"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ})
    return proc, f"http://127.0.0.1:{port}"


def _wait_ready(proc: subprocess.Popen, url: str, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"sftlab serve exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"sftlab serve at {url} not ready after {timeout}s")


@pytest.fixture(scope="module")
def two_servers(tiny_model_dir):
    """Two `sftlab serve` processes on the same tiny model (started together: they load in parallel)."""
    servers = [_serve(tiny_model_dir) for _ in range(2)]
    try:
        for proc, url in servers:
            _wait_ready(proc, url)
        yield servers
    finally:
        for proc, _ in servers:
            if proc.poll() is None:
                proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("prompts") / "prompts.jsonl"
    path.write_text("".join(json.dumps({"id": f"q{i}", "messages": [{"role": "user", "content": f"Question {i}: "
                                                                      f"name {i % 7 + 1} fruits."}]}) + "\n"
                            for i in range(N_PROMPTS)))
    return path


def _distill_cmd(prompts, out, *urls) -> list[str]:
    return [sys.executable, "-m", "sftlab", "curate", "distill", "--prompts", str(prompts), "--teacher", "tiny",
            "--out", str(out), "--max-new-tokens", "16", "--batch-size", "4", "--keep-unfinished",
            *[a for u in urls for a in ("--base-url", f"{u}/v1")]]


def _lines(path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def _busy(url: str) -> bool:
    try:
        health = httpx.get(f"{url}/health", timeout=1).json()
    except httpx.TransportError:
        return False
    return health["running"] + health["queued"] > 0


def test_one_endpoint_killed_mid_run_output_identical_and_resumes_elsewhere(two_servers, prompts_file, tmp_path):
    (server_a, url_a), (server_b, url_b) = two_servers
    reference = tmp_path / "one_endpoint.jsonl"
    subprocess.run(_distill_cmd(prompts_file, reference, url_a), check=True, capture_output=True)

    out = tmp_path / "two_endpoints.jsonl"
    run = subprocess.Popen(_distill_cmd(prompts_file, out, url_a, url_b), stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (_lines(out) >= 4 and _busy(url_b)) and run.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert run.poll() is None, "the run ended before the second endpoint could be killed mid-run"
    killed_at = _lines(out)
    server_b.send_signal(signal.SIGKILL)  # with requests in flight on it
    stdout, stderr = run.communicate(timeout=300)
    assert run.returncode == 0, stderr[-3000:]
    assert killed_at < N_PROMPTS, "the kill came after the last record"
    assert f"endpoint {url_b}/v1 failed" in stderr  # its requests were moved, not lost
    assert out.read_bytes() == reference.read_bytes()  # whichever endpoint answered, the same bytes
    summary = json.loads(out.with_suffix(".summary.json").read_text())
    assert summary["records_written"] == N_PROMPTS and not summary["skipped"]
    assert url_b not in out.with_name(out.name + ".manifest.json").read_text()  # the model name, not the URLs

    # resuming on another set of endpoints (only the survivor): nothing to redo, nothing changed
    again = subprocess.run(_distill_cmd(prompts_file, out, url_a), capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads(out.with_suffix(".summary.json").read_text())["already_done"] == N_PROMPTS
    assert out.read_bytes() == reference.read_bytes()


class _Failing(BaseHTTPRequestHandler):
    """An endpoint that answers every request with a 500, or (`hang`) never answers at all."""

    hang = False
    calls = 0

    def do_POST(self):  # noqa: N802
        type(self).calls += 1
        self.rfile.read(int(self.headers["content-length"]))
        if self.hang:
            time.sleep(30)
            return
        self.send_response(500)
        self.send_header("content-type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"error": {"message": "boom"}}')

    def log_message(self, *a):
        pass


def _local_server(handler: type[BaseHTTPRequestHandler]) -> tuple[ThreadingHTTPServer, str]:
    """A real local HTTP server on 127.0.0.1 with `handler`, and its OpenAI-style base URL."""
    srv = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, f"http://127.0.0.1:{srv.server_address[1]}/v1"


def _failing_server(hang: bool) -> tuple[ThreadingHTTPServer, str]:
    return _local_server(type("Hang" if hang else "Err500", (_Failing,), {"hang": hang, "calls": 0}))


def test_refused_5xx_and_timeout_endpoints_cost_a_retry_elsewhere(two_servers, tmp_path):
    (_, url_a), _ = two_servers
    err500, url_500 = _failing_server(hang=False)
    hang, url_hang = _failing_server(hang=True)
    refused = f"http://127.0.0.1:{_free_port()}/v1"
    try:
        good = OpenAIHTTPGenerator(f"{url_a}/v1", "tiny", api_key_env=None)
        mixed = OpenAIHTTPGenerator([url_500, refused, url_hang, f"{url_a}/v1"], "tiny", api_key_env=None,
                                    timeout=10, concurrency=2)
        prompts = [[{"role": "user", "content": f"Say {i}."}] for i in range(12)]
        params = SamplingParams(max_new_tokens=8)
        assert [g[0].text for g in mixed.generate(prompts, params)] == \
               [g[0].text for g in good.generate(prompts, params)]
        report = mixed.pool.report()
        assert report[f"{url_a}/v1"]["served"] == 12
        assert all(report[u]["failed"] >= 1 and report[u]["served"] == 0 for u in (url_500, refused, url_hang))
        # a failed endpoint rests: far fewer tries than prompts reached it
        assert err500.RequestHandlerClass.calls < 12
    finally:
        for srv in (err500, hang):
            srv.shutdown()
            srv.server_close()


def test_all_endpoints_down_is_a_clear_error_with_finished_work_kept(tmp_path):
    down = [f"http://127.0.0.1:{_free_port()}/v1" for _ in range(2)]
    gen = OpenAIHTTPGenerator(down, "tiny", api_key_env=None, backoff=0.01, max_retries=1)
    convs = [Conversation([Turn("user", f"Q{i}")], id=str(i)) for i in range(3)]
    with pytest.raises(GenerationError, match="all 2 endpoints failed.*re-run the same command to resume"):
        distill(convs, gen, tmp_path / "d.jsonl", SamplingParams(), generator_id=engine_id("tiny", base_url=down))


def test_credentials_in_an_endpoint_url_are_never_logged_or_shown(caplog):
    err500, url = _failing_server(hang=False)
    with_password = url.replace("http://", "http://alice:s3cret@")
    refused = f"http://bob:hunter2@127.0.0.1:{_free_port()}/v1"
    try:
        gen = OpenAIHTTPGenerator([with_password, refused], "tiny", api_key_env=None, backoff=0.01, max_retries=1)
        with pytest.raises(GenerationError) as e, caplog.at_level("WARNING"):
            gen.generate([[{"role": "user", "content": "Hi"}]], SamplingParams(max_new_tokens=4))
    finally:
        err500.shutdown()
        err500.server_close()
    shown = [str(e.value), caplog.text, json.dumps(gen.pool.report())]
    assert err500.RequestHandlerClass.calls >= 1 and "***@127.0.0.1" in str(e.value)  # the request was sent
    assert not any(secret in text for text in shown for secret in ("s3cret", "hunter2", "alice", "bob")), shown


class _Recording(BaseHTTPRequestHandler):
    """An endpoint that keeps every request's body and answers "ok"."""

    bodies: list = []

    def do_POST(self):  # noqa: N802
        type(self).bodies.append(json.loads(self.rfile.read(int(self.headers["content-length"]))))
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"choices": [{"index": 0, "message": {"content": "ok"}, "finish_reason": "stop"}]}')

    def log_message(self, *a):
        pass


def test_a_tool_prompt_is_sent_with_its_tools(tmp_path):
    """Distilling through an endpoint, a prompt's tools go in the request (they were left out of it)."""
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    convs = [Conversation([Turn("user", "Weather?"), Turn("assistant", "Sunny.")], id="t", tools=tools),
             Conversation([Turn("user", "Hi")], id="h")]
    srv, url = _local_server(type("Rec", (_Recording,), {"bodies": []}))
    try:
        gen = OpenAIHTTPGenerator(url, "tiny", api_key_env=None)
        distill(convs, gen, tmp_path / "d.jsonl", SamplingParams(max_new_tokens=4))
    finally:
        srv.shutdown()
        srv.server_close()
    sent = {b["messages"][0]["content"]: b for b in srv.RequestHandlerClass.bodies}
    assert sent["Weather?"]["tools"] == tools and "tools" not in sent["Hi"]
    assert sent["Weather?"]["messages"] == [{"role": "user", "content": "Weather?"}]  # the reply is not sent
    rows = [json.loads(x) for x in (tmp_path / "d.jsonl").read_text().splitlines()]
    assert [r.get("tools") for r in rows] == [tools, None]


class _ToolCalling(BaseHTTPRequestHandler):
    """An endpoint answering as vLLM, llama.cpp or OpenAI do when the request offered tools: no content, the call as
    structured `tool_calls` with its arguments as JSON text (cut off for the prompt "Broken?"); "Hello!" otherwise."""

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        asked = body["messages"][-1]["content"]
        if body.get("tools"):
            args = '{"city": "Par' if asked == "Broken?" else '{"city": "Paris", "unit": "C"}'
            call = {"id": "call_0", "type": "function", "function": {"name": "get_weather", "arguments": args}}
            choice = {"index": 0, "finish_reason": "tool_calls",
                      "message": {"role": "assistant", "content": None, "tool_calls": [call]}}
        else:
            choice = {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "Hello!"}}
        reply = json.dumps({"choices": [choice], "usage": {"completion_tokens": 12}}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *a):
        pass


def test_a_structured_tool_call_is_kept_in_the_distilled_record(tmp_path, tiny_tokenizer):
    """Before: only `message.content` was read, so a reply that was a structured tool call came back empty (and
    unfinished: finish_reason "tool_calls"): its prompt gave no record, the call was lost. Now the call is the
    assistant turn's tool_calls, the record loads, validates and trains on it; arguments that are not JSON are a
    counted skip."""
    from sftlab.data.loading import load_conversations
    from sftlab.templates.chat_templates import ensure_chat_template
    from sftlab.templates.masking import IGNORE_INDEX, tokenize_conversation

    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}, "unit": {"type": "string"}}}}}]
    call = {"name": "get_weather", "arguments": {"city": "Paris", "unit": "C"}}
    convs = [Conversation([Turn("user", "Weather in Paris?")], id="w", tools=tools),
             Conversation([Turn("user", "Broken?")], id="b", tools=tools),
             Conversation([Turn("user", "Hi")], id="h")]
    srv, url = _local_server(_ToolCalling)
    try:
        gen = OpenAIHTTPGenerator(url, "teacher", api_key_env=None)
        (weather,), (broken,), (hello,) = gen.generate(convs, SamplingParams(max_new_tokens=64))
        stats = distill(convs, gen, tmp_path / "d.jsonl", SamplingParams(max_new_tokens=64))
    finally:
        srv.shutdown()
        srv.server_close()
    assert stats.records == 2 and dict(stats.skipped) == {"invalid tool call": 1}

    rows = {r["id"]: r for r in map(json.loads, (tmp_path / "d.jsonl").read_text().splitlines())}
    assert rows["w-0"]["messages"][-1] == {"role": "assistant", "content": "",
                                           "tool_calls": [{"type": "function", "function": call}]}
    assert rows["h-0"]["messages"][-1] == {"role": "assistant", "content": "Hello!"}
    loaded, report = load_conversations(str(tmp_path / "d.jsonl"))
    assert not report.skipped and [c.turns[-1].tool_calls for c in loaded] == [[call], None]
    tok = tiny_tokenizer
    ensure_chat_template(tok, "chatml")
    ex = tokenize_conversation(tok, loaded[0])
    trained = tok.decode([i for i, lab in zip(ex.input_ids, ex.labels, strict=True) if lab != IGNORE_INDEX])
    assert "<tool_call>" in trained and '"get_weather"' in trained and '"Paris"' in trained
    assert (weather.text, weather.tool_calls, weather.finished) == ("", [call], True)
    assert broken.tool_calls is None and "not valid JSON" in broken.tool_call_error
    assert (hello.text, hello.tool_calls, hello.finished) == ("Hello!", None, True)


def test_best_of_k_scores_and_keeps_a_structured_tool_call(tmp_path):
    """The reward reads a structured call as the template renders it (`<tool_call>` JSON); one whose arguments are
    not JSON is never kept (before: both replies were empty text, scored 0 and dropped as unfinished)."""
    from sftlab.curate.best_of_k import best_of_k
    from sftlab.curate.rewards import make_reward

    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    convs = [Conversation([Turn("user", q)], id=q, tools=tools) for q in ("Weather in Paris?", "Broken?")]
    srv, url = _local_server(_ToolCalling)
    try:
        gen = OpenAIHTTPGenerator(url, "policy", api_key_env=None)
        stats = best_of_k(convs, gen, make_reward("json_valid"), tmp_path / "b.jsonl", SamplingParams(n=1),
                          reward_name="json_valid", min_score=1.0)
    finally:
        srv.shutdown()
        srv.server_close()
    (row,) = map(json.loads, (tmp_path / "b.jsonl").read_text().splitlines())
    assert row["meta"]["score"] == 1.0 and row["messages"][-1]["tool_calls"][0]["function"]["name"] == "get_weather"
    assert stats.skipped["invalid tool call"] == 1 and stats.extra["pass@1"] == 0.5


def test_least_loaded_dispatch_and_resting_endpoints():
    pool = EndpointPool(["http://a", "http://b", "http://c"], rest=60)
    a, b, c = pool.endpoints
    assert [pool.acquire(set()).url for _ in range(4)] == ["http://a", "http://b", "http://c", "http://a"]
    pool.release(b)  # b finishes first: it has the fewest in flight
    assert pool.acquire(set()) is b
    pool.release(c, "ConnectError")  # c fails: it rests, the others take the work
    assert {pool.acquire(set()).url for _ in range(3)} == {"http://a", "http://b"}
    assert pool.acquire({"http://a", "http://b"}) is c  # resting, but the only one left for this request
    assert pool.acquire({"http://a", "http://b", "http://c"}) is None
    assert engine_id("m", base_url=["http://a"]) == engine_id("m", base_url=["http://b", "http://c"]) != \
        engine_id("other", base_url=["http://a"])


def test_judge_endpoints_in_yaml_configs_may_be_a_list():
    from sftlab.curate.filter.scorers import ScorerSettings

    urls = ["http://127.0.0.1:8001/v1", "http://127.0.0.1:8002/v1"]
    assert ScorerSettings(type="judge", base_url=urls).base_url == urls
    gen = OpenAIHTTPGenerator(urls, "judge", api_key_env=None)
    assert [e.url for e in gen.pool.endpoints] == urls and gen.model_id == "judge"
