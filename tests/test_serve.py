"""`vllm serve` with an spd config: OpenAI endpoints, streaming, aborts, /metrics; with
all stages in one worker and with one stage per pipeline rank."""

import json
import os
import socket
import subprocess
import sys
import time

import pytest
import requests

from vllm_spd.head import init_head


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module", params=["single_worker", "pipeline"])
def server(tiny_qwen3, tmp_path_factory, request):
    head = str(tmp_path_factory.mktemp("serve") / "head")
    init_head(tiny_qwen3, 2, head)
    port = free_port()
    spec = json.dumps({"method": "spd", "num_stages": 2, "model": head, "stage_placement": request.param})
    log = open(tmp_path_factory.mktemp("log") / "serve.log", "w+")
    env = dict(os.environ, VLLM_ENABLE_V1_MULTIPROCESSING="1", VLLM_CPU_OMP_THREADS_BIND="nobind")
    proc = subprocess.Popen(
        [sys.executable, "-m", "vllm.entrypoints.cli.main", "serve", tiny_qwen3, "--host", "127.0.0.1",
         "--port", str(port), "--dtype", "float32", "--enforce-eager", "--max-model-len", "512",
         "--served-model-name", "tiny", "--enable-auto-tool-choice", "--tool-call-parser", "hermes", "--speculative-config", spec],
        stdout=log, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 300
    while time.time() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            pytest.fail("vllm serve exited:\n" + log.read()[-5000:])
        try:
            if requests.get(base + "/health", timeout=2).status_code == 200:
                break
        except requests.RequestException:
            pass
        time.sleep(1)
    else:
        proc.kill()
        pytest.fail("vllm serve did not become healthy")
    yield base
    proc.terminate()
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()


def complete(base, prompt, **kw):
    body = {"model": "tiny", "prompt": prompt, "max_tokens": 24, "temperature": 0, **kw}
    return requests.post(base + "/v1/completions", json=body, timeout=120)


def test_models(server):
    data = requests.get(server + "/v1/models", timeout=10).json()
    assert [m["id"] for m in data["data"]] == ["tiny"]


def test_completions_stream_and_not(server):
    full = complete(server, "def add(a, b):").json()["choices"][0]["text"]
    assert full
    with requests.post(server + "/v1/completions", stream=True, timeout=120, json={
            "model": "tiny", "prompt": "def add(a, b):", "max_tokens": 24, "temperature": 0, "stream": True}) as r:
        pieces = []
        for line in r.iter_lines():
            if line.startswith(b"data: ") and line != b"data: [DONE]":
                pieces.append(json.loads(line[6:])["choices"][0]["text"])
    assert "".join(pieces) == full


def test_chat_completions_stream_and_not(server):
    messages = [{"role": "user", "content": "Say something."}]
    body = {"model": "tiny", "messages": messages, "max_tokens": 16, "temperature": 0}
    text = requests.post(server + "/v1/chat/completions", json=body, timeout=120).json()["choices"][0]["message"]["content"]
    with requests.post(server + "/v1/chat/completions", json={**body, "stream": True}, stream=True, timeout=120) as r:
        pieces = []
        for line in r.iter_lines():
            if line.startswith(b"data: ") and line != b"data: [DONE]":
                delta = json.loads(line[6:])["choices"][0]["delta"]
                pieces.append(delta.get("content") or "")
    assert "".join(pieces) == text


def test_abort_stream_leaves_server_healthy(server):
    before = complete(server, "class Stack:").json()["choices"][0]["text"]
    r = requests.post(server + "/v1/completions", stream=True, timeout=120, json={
        "model": "tiny", "prompt": "Once upon a time", "max_tokens": 400, "temperature": 0, "stream": True})
    for i, _ in enumerate(r.iter_lines()):
        if i > 3:
            break
    r.close()   # client goes away mid-stream: the server aborts the request
    time.sleep(1)
    assert requests.get(server + "/health", timeout=10).status_code == 200
    assert complete(server, "class Stack:").json()["choices"][0]["text"] == before


def test_unsupported_sampling_is_a_clear_400(server):
    messages = [{"role": "user", "content": "Think."}]
    r = requests.post(server + "/v1/chat/completions", timeout=120, json={
        "model": "tiny", "messages": messages, "max_tokens": 8, "thinking_token_budget": 4})
    assert r.status_code == 400
    assert "spd" in r.text and "thinking_token_budget" in r.text
    assert complete(server, "hello").status_code == 200


def test_json_response_format(server):
    """Chat with a JSON schema (valid JSON) and with a named tool (vLLM's tool-call frame)."""
    schema = {"type": "object", "properties": {"n": {"enum": [1, 2, 3]}}, "required": ["n"],
              "additionalProperties": False}
    messages = [{"role": "user", "content": "A number as JSON."}]
    r = requests.post(server + "/v1/chat/completions", timeout=120, json={
        "model": "tiny", "messages": messages, "max_tokens": 24, "temperature": 0,
        "response_format": {"type": "json_schema", "json_schema": {"name": "n", "schema": schema}}}).json()
    choice = r["choices"][0]
    if choice["finish_reason"] == "stop":
        assert set(json.loads(choice["message"]["content"])) == {"n"}
    else:   # cut at max_tokens: still a prefix of the schema's language
        assert choice["message"]["content"].startswith('{')
    tools = [{"type": "function", "function": {"name": "pick", "parameters": schema}}]
    r = requests.post(server + "/v1/chat/completions", timeout=120, json={
        "model": "tiny", "messages": messages, "max_tokens": 64, "temperature": 0, "tools": tools,
        "tool_choice": {"type": "function", "function": {"name": "pick"}}})
    assert r.status_code == 200, r.text
    # vLLM's hermes tag constrains the call's frame (a random tiny model writes it only if
    # forced); plain vLLM gives this model the same text token for token.
    assert r.json()["choices"][0]["message"]["content"].startswith('<tool_call>\n{"name": "pick", "arguments": ')


def test_logprobs_and_penalties(server):
    """Completions with logprobs and penalties; chat with logprobs and top_logprobs."""
    body = complete(server, "def add(a, b):", logprobs=2, presence_penalty=0.5, repetition_penalty=1.2,
                    max_tokens=12).json()
    lp = body["choices"][0]["logprobs"]
    assert len(lp["tokens"]) == 12 and all(len(t) >= 2 for t in lp["top_logprobs"])
    assert all(x <= 0 for x in lp["token_logprobs"])
    messages = [{"role": "user", "content": "Say something."}]
    r = requests.post(server + "/v1/chat/completions", timeout=120, json={
        "model": "tiny", "messages": messages, "max_tokens": 8, "temperature": 0, "logprobs": True,
        "top_logprobs": 3, "frequency_penalty": 0.5}).json()
    content = r["choices"][0]["logprobs"]["content"]
    assert len(content) == 8 and all(len(c["top_logprobs"]) == 3 for c in content)


def test_metrics_count_drafts(server):
    complete(server, "for i in range(10):")
    text = requests.get(server + "/metrics", timeout=10).text
    values = {line.split("{")[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
              if line.startswith("vllm:spec_decode_num_") and "{" in line and "per_pos" not in line}
    assert values["vllm:spec_decode_num_drafts_total"] > 0
    assert values["vllm:spec_decode_num_draft_tokens_total"] == values["vllm:spec_decode_num_drafts_total"]
    assert 0 <= values["vllm:spec_decode_num_accepted_tokens_total"] <= values["vllm:spec_decode_num_drafts_total"]
