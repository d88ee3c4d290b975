"""Tool calling on the reference server (openai profile): the request's rules, OpenAI's shapes for the
message and the stream, the mock engine's planned calls, calls a model writes (a scripted engine, then
the llama.cpp engine's real model, slow), and a clear 400 from an engine without tools."""

from __future__ import annotations

import asyncio
import http.client
import json
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import jsonschema
import pytest
from aiohttp import test_utils

import spec
from reference_server.app import ServerConfig, build_app
from reference_server.engines.base import Engine, GeneratedToken, SamplingParams
from reference_server.launcher import RunningServer, running_server

FAST = ("--ttft-ms", "0", "--itl-ms", "0")
RESPONSE = jsonschema.Draft202012Validator(spec.response_schema())
CHUNK = jsonschema.Draft202012Validator(spec.chunk_schema())
WEATHER = {"type": "object", "properties": {"city": {"type": "string", "minLength": 2, "maxLength": 32},
                                            "days": {"type": "integer", "minimum": 1}},
           "required": ["city", "days"]}
TIME = {"type": "object", "properties": {"zone": {"type": "string", "enum": ["UTC", "CET"]}}, "required": ["zone"]}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}},
         {"type": "function", "function": {"name": "get_time", "parameters": TIME}}]
SCHEMAS = {"get_weather": WEATHER, "get_time": TIME}


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    with running_server(*FAST, engine="mock") as running:
        yield running


@pytest.fixture(scope="module")
def thinking() -> Iterator[RunningServer]:
    with running_server(*FAST, "--mock-reasoning-tokens", "3", engine="mock") as running:
        yield running


def post(server: RunningServer, **extra: Any) -> tuple[int, bytes]:
    body = {"model": server.model, "messages": [{"role": "user", "content": "What is the weather?"}],
            "max_tokens": 64, "tools": TOOLS, **extra}
    conn = http.client.HTTPConnection(server.base_url.removeprefix("http://"), timeout=300)  # a busy CPU
    try:
        conn.request("POST", spec.CHAT_PATH, body=json.dumps(body).encode(),
                     headers={"Content-Type": "application/json", "Authorization": f"Bearer {server.api_key}"})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def completion(server: RunningServer, **extra: Any) -> dict[str, Any]:
    status, data = post(server, **extra)
    assert status == 200, data[:300]
    body = json.loads(data)
    assert not list(RESPONSE.iter_errors(body)), body
    return body


def chunks(server: RunningServer, **extra: Any) -> list[dict[str, Any]]:
    status, data = post(server, stream=True, **extra)
    assert status == 200, data[:300]
    events = [e.removeprefix(b"data: ").decode() for e in data.split(b"\n\n") if e]
    assert events[-1] == "[DONE]"
    out = [json.loads(e) for e in events[:-1]]
    for chunk in out:
        assert not list(CHUNK.iter_errors(chunk)), chunk
    return out


def error(server: RunningServer, **extra: Any) -> tuple[int, dict[str, Any]]:
    status, data = post(server, **extra)
    return status, json.loads(data)["error"]


def named(name: str) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name}}


def test_required_calls_every_tool_with_valid_arguments(server: RunningServer) -> None:
    choice = completion(server, tool_choice="required")["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    calls = choice["message"]["tool_calls"]
    assert [call["function"]["name"] for call in calls] == ["get_weather", "get_time"]
    assert len({call["id"] for call in calls}) == 2
    for call in calls:
        assert call["type"] == "function"
        jsonschema.validate(json.loads(call["function"]["arguments"]), SCHEMAS[call["function"]["name"]])


def test_one_call_without_parallel_calls_and_the_named_one_when_named(server: RunningServer) -> None:
    single = completion(server, tool_choice="required", parallel_tool_calls=False)["choices"][0]["message"]
    assert [call["function"]["name"] for call in single["tool_calls"]] == ["get_weather"]
    forced = completion(server, tool_choice=named("get_time"))["choices"][0]["message"]
    assert [call["function"]["name"] for call in forced["tool_calls"]] == ["get_time"]


def test_auto_calls_the_first_tool_and_none_answers_in_text(server: RunningServer) -> None:
    auto = completion(server, tool_choice="auto")["choices"][0]
    assert [call["function"]["name"] for call in auto["message"]["tool_calls"]] == ["get_weather"]
    text = completion(server, tool_choice="none", logit_bias={"0": -100}, max_tokens=4)["choices"][0]
    assert "tool_calls" not in text["message"] and text["message"]["content"]
    assert text["finish_reason"] == "length"


def test_a_stream_names_each_call_once_then_sends_fragments(server: RunningServer) -> None:
    stream = chunks(server, tool_choice="required")
    items = [item for chunk in stream for choice in chunk["choices"]
             for item in choice["delta"].get("tool_calls", [])]
    heads = [item for item in items if "id" in item]
    assert [(h["index"], h["type"], h["function"]) for h in heads] == [
        (0, "function", {"name": "get_weather", "arguments": ""}),
        (1, "function", {"name": "get_time", "arguments": ""})]
    fragments = [item for item in items if "id" not in item]
    assert all(set(item) == {"index", "function"} and set(item["function"]) == {"arguments"} for item in fragments)
    for index, name in enumerate(("get_weather", "get_time")):
        parts = [item["function"]["arguments"] for item in fragments if item["index"] == index]
        assert len(parts) > 1
        jsonschema.validate(json.loads("".join(parts)), SCHEMAS[name])
    reasons = [c["finish_reason"] for chunk in stream for c in chunk["choices"] if c.get("finish_reason")]
    assert reasons == ["tool_calls"]


def test_a_call_cut_by_max_tokens_finishes_with_length(server: RunningServer) -> None:
    choice = completion(server, tool_choice=named("get_weather"), max_tokens=3)["choices"][0]
    assert choice["finish_reason"] == "length"
    assert choice["message"]["tool_calls"][0]["function"]["name"] == "get_weather"


def test_a_follow_up_turn_with_the_tool_answer_is_accepted(server: RunningServer) -> None:
    call = completion(server, tool_choice=named("get_time"))["choices"][0]["message"]["tool_calls"][0]
    turns = [{"role": "user", "content": "What time is it?"},
             {"role": "assistant", "content": None, "tool_calls": [call]},
             {"role": "tool", "tool_call_id": call["id"], "content": "12:00"}]
    answer = completion(server, messages=turns, tool_choice="none", max_tokens=4)
    assert answer["choices"][0]["message"]["content"] is not None


@pytest.mark.parametrize(("extra", "param", "says"), [
    ({"tool_choice": named("nope")}, "tool_choice", "'nope'"),
    ({"tools": None, "tool_choice": "required"}, "tool_choice", "required"),
    ({"tools": [{"type": "function"}]}, "tools", "function"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "nonsense"}}}]}, "tools",
     "not a valid JSON Schema"),
    ({"tools": TOOLS + TOOLS[:1]}, "tools", "more than once"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "messages", ""),
], ids=["unknown_name", "required_without_tools", "no_function", "bad_parameters", "duplicate", "tool_without_id"])
def test_mistakes_are_400s_naming_the_parameter(server: RunningServer, extra: dict[str, Any], param: str,
                                               says: str) -> None:
    status, body = error(server, **extra)
    assert (status, body["param"]) == (400, param), body
    assert says in body["message"]


class TextOnly(Engine):
    """An engine that cannot make tool calls (as ExLlamaV2's, for now)."""

    model_name = "text-only"
    context_length = 100
    vocab_size = 16

    def tokenize_chat(self, messages: list[dict[str, Any]]) -> list[int]:
        return [1]

    async def stream(self, prompt_tokens: list[int], params: SamplingParams, cancel: threading.Event,
                     started: float | None = None) -> AsyncIterator[GeneratedToken]:
        yield GeneratedToken(1, b" x")


@pytest.mark.filterwarnings("ignore:It is recommended to use web.AppKey")
def test_an_engine_without_tools_answers_a_400_naming_tools() -> None:
    async def go() -> tuple[int, dict[str, Any], int]:
        app = build_app(TextOnly(), ServerConfig(auth_required=False))
        base = {"model": "text-only", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        async with test_utils.TestClient(test_utils.TestServer(app)) as http:
            refused = await http.post(spec.CHAT_PATH, json={**base, "tools": TOOLS, "tool_choice": "required"})
            plain = await http.post(spec.CHAT_PATH, json=base)
            return refused.status, (await refused.json())["error"], plain.status

    status, body, plain = asyncio.run(go())
    assert (status, body["param"], plain) == (400, "tools", 200)
    assert "does not serve tools" in body["message"]


def test_reasoning_comes_before_text_with_tools_and_calls_stay_whole(thinking: RunningServer) -> None:
    stream = chunks(thinking, tool_choice="none", logit_bias={"0": -100}, max_tokens=6)
    kinds = [key for chunk in stream for c in chunk["choices"] for key, value in c["delta"].items()
             if key in ("content", "reasoning_content") and value]
    assert kinds == ["reasoning_content"] * 3 + ["content"] * (len(kinds) - 3) and len(kinds) > 3
    call = completion(thinking, tool_choice="required")["choices"][0]["message"]["tool_calls"][0]
    jsonschema.validate(json.loads(call["function"]["arguments"]), WEATHER)


class Writer(Engine):
    """A "written" engine with scripted text: `free` unconstrained, `call` in JSON mode (where it
    checks that it was given the grammar of a call), one token per 3 characters. It keeps the chats
    it rendered."""

    model_name = "writer"
    context_length = 1000
    vocab_size = 16
    tool_calls = "written"

    def __init__(self, free: str, call: str) -> None:
        self.free, self.call = free, call
        self.chats: list[list[dict[str, Any]]] = []
        self.schemas: list[dict[str, Any] | None] = []

    def tokenize_chat(self, messages: list[dict[str, Any]]) -> list[int]:
        self.chats.append(messages)
        return [1]

    async def stream(self, prompt_tokens: list[int], params: SamplingParams, cancel: threading.Event,
                     started: float | None = None) -> AsyncIterator[GeneratedToken]:
        text = self.call if params.json_mode else self.free
        if params.json_mode:
            self.schemas.append(params.json_schema)
        for start in range(0, min(len(text), 3 * params.max_tokens), 3):
            yield GeneratedToken(1, text[start:start + 3].encode(), logprob=-0.5)


CALL = '{ "name": "get_time", "parameters": {"zone": "UTC"} }'
CALL_TOKENS = -(-(CALL.index("} }") + 1) // 3)  # the call's tokens up to its arguments' closing brace


def writer_answer(engine: Writer, **extra: Any) -> dict[str, Any]:
    """The non-streamed answer of `engine` to the weather question with TOOLS."""
    async def go() -> dict[str, Any]:
        app = build_app(engine, ServerConfig(auth_required=False))
        body = {"model": "writer", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 64,
                "tools": TOOLS, **extra}
        async with test_utils.TestClient(test_utils.TestServer(app)) as http:
            response = await http.post(spec.CHAT_PATH, json=body)
            assert response.status == 200, await response.text()
            return await response.json()
    return asyncio.run(go())


@pytest.mark.filterwarnings("ignore:It is recommended to use web.AppKey")
def test_a_written_call_is_parsed_from_the_grammar_constrained_text() -> None:
    engine = Writer(free="unused", call=CALL)
    body = writer_answer(engine, tool_choice=named("get_time"))
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    (call,) = choice["message"]["tool_calls"]
    assert (call["function"]["name"], json.loads(call["function"]["arguments"])) == ("get_time", {"zone": "UTC"})
    assert engine.schemas == [{"type": "object", "required": ["name", "parameters"], "additionalProperties": False,
                               "properties": {"name": {"const": "get_time"}, "parameters": TIME}}]
    system = engine.chats[0][0]
    assert system["role"] == "system" and '"get_weather"' in system["content"] and '"get_time"' in system["content"]
    assert body["usage"]["completion_tokens"] == CALL_TOKENS  # generation stops once the arguments close


@pytest.mark.filterwarnings("ignore:It is recommended to use web.AppKey")
def test_auto_opening_with_a_brace_becomes_a_call_under_the_grammar_and_text_stays_text() -> None:
    engine = Writer(free='  {"nam', call=CALL)
    body = writer_answer(engine, tool_choice="auto", logprobs=True)
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["tool_calls"][0]["function"]["arguments"] == '{"zone": "UTC"}'
    assert len(engine.schemas) == 1 and "anyOf" in engine.schemas[0]  # either tool
    assert body["usage"]["completion_tokens"] == 1 + CALL_TOKENS  # the opening ("  {") the model chose counts
    assert choice["logprobs"] == {"content": [], "refusal": None}  # none for a call's tokens (as OpenAI)
    text = writer_answer(Writer(free=" It is sunny. {not a call}", call=CALL), tool_choice="auto", logprobs=True,
                         stop=["{"])["choices"][0]
    assert (text["finish_reason"], text["message"]["content"]) == ("stop", " It is sunny. {")  # kept (the spec)
    assert "tool_calls" not in text["message"] and len(text["logprobs"]["content"]) == 5


@pytest.mark.filterwarnings("ignore:It is recommended to use web.AppKey")
def test_a_written_call_cut_short_finishes_with_length_and_the_history_is_made_plain() -> None:
    engine = Writer(free="unused", call=CALL)
    cut = writer_answer(engine, tool_choice=named("get_time"), max_tokens=8)["choices"][0]
    assert cut["finish_reason"] == "length"
    assert cut["message"]["tool_calls"][0]["function"]["name"] == "get_time"  # the only one it could call
    unnamed = writer_answer(engine, tool_choice="required", max_tokens=8)["choices"][0]
    assert unnamed["finish_reason"] == "length" and "tool_calls" not in unnamed["message"]  # cut before "parameters"
    call = {"id": "call_1", "type": "function", "function": {"name": "get_time", "arguments": '{"zone":"UTC"}'}}
    turns = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Time?"},
             {"role": "assistant", "content": None, "tool_calls": [call]},
             {"role": "tool", "tool_call_id": "call_1", "content": "12:00"}]
    engine = Writer(free="It is noon.", call=CALL)
    answer = writer_answer(engine, messages=turns, tool_choice="none")["choices"][0]
    assert answer["message"]["content"] == "It is noon." and not engine.schemas
    system, _, assistant, tool = engine.chats[0]
    assert system["content"].startswith("Be brief.\n\nYou can call these functions:")
    assert json.loads(assistant["content"]) == {"name": "get_time", "parameters": {"zone": "UTC"}}
    assert tool["role"] == "user" and "12:00" in tool["content"]


ASK = [{"role": "user", "content": "What is the weather in Paris for the next 2 days?"}]


@pytest.fixture(scope="module")
def llama() -> Iterator[RunningServer]:
    with running_server(engine="llamacpp") as running:
        yield running


def call_of(body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The name and arguments of the one call a non-streamed answer makes."""
    (call,) = body["choices"][0]["message"]["tool_calls"]
    return call["function"]["name"], json.loads(call["function"]["arguments"])


def streamed_call(stream: list[dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    """The name and arguments of the one call a stream makes, after checking OpenAI's form: the first
    delta names it (index, id, type, name, arguments ""), the later ones carry index and fragments."""
    items = [item for chunk in stream for choice in chunk["choices"] for item in choice["delta"].get("tool_calls", [])]
    head, *fragments = items
    assert set(head) == {"index", "id", "type", "function"} and head["index"] == 0 and head["type"] == "function"
    assert head["function"]["arguments"] == "" and head["id"].startswith("call_")
    assert fragments and all(set(item) == {"index", "function"} and item["index"] == 0
                             and set(item["function"]) == {"arguments"} for item in fragments)
    reasons = [c["finish_reason"] for chunk in stream for c in chunk["choices"] if c.get("finish_reason")]
    assert reasons == ["tool_calls"]
    return head["function"]["name"], json.loads("".join(item["function"]["arguments"] for item in fragments))


@pytest.mark.slow
def test_the_llamacpp_model_writes_a_named_call_in_openais_stream_form(llama: RunningServer) -> None:
    name, arguments = streamed_call(chunks(llama, messages=ASK, tool_choice=named("get_weather"), seed=3))
    assert name == "get_weather"
    jsonschema.validate(arguments, WEATHER)
    unstreamed = completion(llama, messages=ASK, tool_choice=named("get_weather"), seed=3)
    assert call_of(unstreamed) == (name, arguments)  # the same seed gives the same call in both modes


@pytest.mark.slow
def test_the_llamacpp_model_calls_one_of_the_tools_when_required_and_repeats_it_seeded(llama: RunningServer) -> None:
    for seed in (1, 2):
        body = completion(llama, messages=ASK, tool_choice="required", seed=seed)
        assert body["choices"][0]["finish_reason"] == "tool_calls"
        assert body["choices"][0]["message"]["content"] is None
        name, arguments = call_of(body)
        jsonschema.validate(arguments, SCHEMAS[name])
        assert call_of(completion(llama, messages=ASK, tool_choice="required", seed=seed)) == (name, arguments)


@pytest.mark.slow
def test_the_llamacpp_model_answers_auto_with_text_or_a_valid_call_never_a_mix(llama: RunningServer) -> None:
    for seed in (1, 2, 3):
        choice = completion(llama, messages=ASK, tool_choice="auto", seed=seed, max_tokens=48)["choices"][0]
        calls = choice["message"].get("tool_calls")
        if calls:
            assert choice["message"]["content"] is None and choice["finish_reason"] == "tool_calls"
            name, arguments = call_of({"choices": [choice]})
            jsonschema.validate(arguments, SCHEMAS[name])
        else:
            assert isinstance(choice["message"]["content"], str) and choice["finish_reason"] in ("stop", "length")


@pytest.mark.slow
def test_the_llamacpp_model_takes_a_follow_up_turn_with_the_tool_answer(llama: RunningServer) -> None:
    call = completion(llama, tool_choice=named("get_time"), seed=4)["choices"][0]["message"]["tool_calls"][0]
    turns = [{"role": "user", "content": "What time is it?"},
             {"role": "assistant", "content": None, "tool_calls": [call]},
             {"role": "tool", "tool_call_id": call["id"], "content": "12:00"}]
    for choice in ("auto", "none"):
        answer = completion(llama, messages=turns, tool_choice=choice, max_tokens=16, seed=4)["choices"][0]
        assert answer["finish_reason"] in ("stop", "length", "tool_calls")
    assert "tool_calls" not in answer["message"]  # none: text
