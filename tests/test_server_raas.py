"""A real `--kv-policy raas` server (CPU, tiny model, float32) answers every API SGLang users rely on."""

from __future__ import annotations

import json
import urllib.request

import pytest
import sglang as sgl


PROMPT_IDS = [1, 40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50]


@pytest.fixture(scope="module")
def server(raas_server):
    return raas_server  # the shared RaaS server (conftest.RAAS_SERVER_ARGS)


def test_server_runs_with_raas_config(server):
    info = server.get("/get_server_info")
    assert info["page_size"] == 16, "raas without --page-size must run at page size 16"


def test_generate(server):
    out = server.post(
        "/generate",
        {"input_ids": PROMPT_IDS, "sampling_params": {"max_new_tokens": 24, "temperature": 0, "ignore_eos": True}},
    )
    assert len(out["output_ids"]) == 24
    assert out["meta_info"]["prompt_tokens"] == len(PROMPT_IDS)
    assert out["meta_info"]["finish_reason"]["type"] == "length"


def test_generate_text_is_deterministic(server):
    body = {"text": "first we check the sum of each digit, then we carry the remainder and try again " * 3, "sampling_params": {"max_new_tokens": 16, "temperature": 0}}
    a, b = server.post("/generate", body), server.post("/generate", body)
    assert a["output_ids"] == b["output_ids"] and len(a["output_ids"]) > 0
    assert a["meta_info"]["prompt_tokens"] > 32
    assert b["meta_info"]["cached_tokens"] >= 32, "an identical prompt must hit the radix cache"


def test_openai_completions(server):
    out = server.post(
        "/v1/completions",
        {"model": "tiny", "prompt": "let x equal", "max_tokens": 12, "temperature": 0, "ignore_eos": True},
    )
    assert out["object"] == "text_completion"
    assert out["usage"]["completion_tokens"] == 12 and out["choices"][0]["finish_reason"] == "length"


def test_openai_chat_completions(server):
    out = server.post(
        "/v1/chat/completions",
        {
            "model": "tiny",
            "messages": [{"role": "user", "content": "solve 3 + 4"}],
            "max_tokens": 10,
            "temperature": 0,
            "ignore_eos": True,
        },
    )
    assert out["object"] == "chat.completion"
    assert out["choices"][0]["message"]["role"] == "assistant"
    assert out["usage"]["completion_tokens"] == 10


def test_openai_chat_streaming(server):
    req = urllib.request.Request(
        server.url + "/v1/chat/completions",
        data=json.dumps(
            {
                "model": "tiny",
                "messages": [{"role": "user", "content": "think step by step"}],
                "max_tokens": 8,
                "temperature": 0,
                "ignore_eos": True,
                "stream": True,
            }
        ).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=120) as resp:
        events = [line[6:] for line in resp.read().decode().splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


@sgl.function
def two_turn_chat(s, first, second):
    s += sgl.user(first)
    s += sgl.assistant(sgl.gen("a1", max_tokens=12, temperature=0, ignore_eos=True))
    s += sgl.user(second)
    s += sgl.assistant(sgl.gen("a2", max_tokens=12, temperature=0, ignore_eos=True))


def test_frontend_program_two_turns(server):
    backend = sgl.RuntimeEndpoint(server.url)
    first = "what is 2 + 2? first add each digit, then check the carry, then write the answer. " * 2
    state = two_turn_chat.run(first=first, second="now multiply by 3", backend=backend)
    a1, a2 = state.get_meta_info("a1"), state.get_meta_info("a2")
    assert a1["completion_tokens"] == 12 and a2["completion_tokens"] == 12
    assert state["a1"] and state["a2"]
    # turn 2 re-sends turn 1's conversation: the radix cache serves at least turn 1's prompt, in whole pages
    page = server.get("/get_server_info")["page_size"]
    assert a1["prompt_tokens"] >= 2 * page
    assert a2["cached_tokens"] >= a1["prompt_tokens"] // page * page, (a1, a2)
    # the program's text is the conversation, in order
    text = state.text()
    assert text.index(first) < text.index(state["a1"]) < text.index("now multiply by 3")
