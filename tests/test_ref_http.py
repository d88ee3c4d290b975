"""The reference server over raw HTTP (mock engine): bodies, SSE framing byte for byte, errors, limits, the CLI."""

from __future__ import annotations

import http.client
import json
import math
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import spec
from reference_server.counts import counts_since, server_counts
from reference_server.launcher import RunningServer, running_server

FAST = ("--ttft-ms", "0", "--itl-ms", "0")
CHAT = spec.CHAT_PATH
MODELS = spec.MODELS_PATH
NO_EOS = {"0": -100}  # the mock engine's end-of-sequence token: banned, every choice runs to max_tokens

RESPONSE = jsonschema.Draft202012Validator(spec.response_schema())
CHUNK = jsonschema.Draft202012Validator(spec.chunk_schema())
ERROR = jsonschema.Draft202012Validator(spec.error_schema())
MODEL_LIST = jsonschema.Draft202012Validator(spec.schema("ModelList"))


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    with running_server(*FAST, engine="mock") as running:
        yield running


@pytest.fixture(scope="module")
def open_server() -> Iterator[RunningServer]:
    with running_server(*FAST, engine="mock", api_key=None) as running:
        yield running


@pytest.fixture(scope="module")
def tight_server() -> Iterator[RunningServer]:
    args = ("--ttft-ms", "0", "--itl-ms", "50", "--max-queue", "1", "--max-body-bytes", "2000")
    with running_server(*args, engine="mock") as running:
        yield running


# ---- raw HTTP helpers -----------------------------------------------------------------------


@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    data: bytes

    def json(self) -> Any:
        return json.loads(self.data)


def _host(server: RunningServer) -> str:
    return server.base_url.removeprefix("http://")


def _headers(server: RunningServer, auth: bool | str, extra: dict[str, str] | None) -> dict[str, str]:
    headers = {"Content-Type": "application/json"}
    if auth is True and server.api_key:
        headers["Authorization"] = f"Bearer {server.api_key}"
    elif isinstance(auth, str):
        headers["Authorization"] = auth
    headers.update(extra or {})
    return headers


def call(
    server: RunningServer,
    payload: Any = None,
    *,
    method: str = "POST",
    path: str = CHAT,
    raw: bytes | None = None,
    auth: bool | str = True,
    headers: dict[str, str] | None = None,
    chunked: bool = False,
) -> Reply:
    conn = http.client.HTTPConnection(_host(server), timeout=30)
    try:
        data = raw if raw is not None else (None if payload is None else json.dumps(payload).encode())
        hdrs = _headers(server, auth, headers)
        if chunked:
            conn.request(method, path, body=iter([data or b""]), headers=hdrs, encode_chunked=True)
        else:
            conn.request(method, path, body=data, headers=hdrs)
        response = conn.getresponse()
        return Reply(response.status, response.headers, response.read())
    finally:
        conn.close()


def request(server: RunningServer, **extra: Any) -> dict[str, Any]:
    return {
        "model": server.model,
        "messages": [{"role": "user", "content": "Tell me about the cat."}],
        "max_tokens": 12,
        **extra,
    }


def sse_data(raw: bytes) -> list[str]:
    """The `data` of each event, checking that every event is exactly one `data: ...` line ended by a blank line."""
    assert raw.endswith(b"\n\n"), raw[-40:]
    events = raw[:-2].split(b"\n\n")
    out = []
    for event in events:
        assert event.startswith(b"data: ") and b"\n" not in event and b"\r" not in event, event[:80]
        out.append(event[len(b"data: ") :].decode("utf-8"))
    return out


def stream(server: RunningServer, **extra: Any) -> tuple[Reply, list[dict[str, Any]]]:
    reply = call(server, request(server, stream=True, **extra))
    assert reply.status == 200, reply.data[:300]
    assert reply.headers["Content-Type"].startswith("text/event-stream")
    data = sse_data(reply.data)
    assert data.count("[DONE]") == 1 and data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    for chunk in chunks:
        errors = [e.message for e in CHUNK.iter_errors(chunk)]
        assert not errors, (errors, chunk)
    return reply, chunks


def complete(server: RunningServer, **extra: Any) -> dict[str, Any]:
    reply = call(server, request(server, **extra))
    assert reply.status == 200, reply.data[:300]
    assert reply.headers["Content-Type"].startswith("application/json")
    body = reply.json()
    errors = [e.message for e in RESPONSE.iter_errors(body)]
    assert not errors, (errors, body)
    return body


def texts_of(chunks: list[dict[str, Any]]) -> dict[int, str]:
    out: dict[int, str] = {}
    for chunk in chunks:
        for choice in chunk["choices"]:
            out[choice["index"]] = out.get(choice["index"], "") + (choice["delta"].get("content") or "")
    return out


def finishes_of(chunks: list[dict[str, Any]]) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for chunk in chunks:
        for choice in chunk["choices"]:
            if choice.get("finish_reason") is not None:
                out.setdefault(choice["index"], []).append(choice["finish_reason"])
    return out


def assert_error(reply: Reply, status: int, param: str | None = None) -> dict[str, Any]:
    assert reply.status == status, (reply.status, reply.data[:300])
    assert reply.headers["Content-Type"].startswith("application/json")
    body = reply.json()
    errors = [e.message for e in ERROR.iter_errors(body)]
    assert not errors, (errors, body)
    if param is not None:
        assert body["error"]["param"] == param, body
    return body["error"]


# ---- non-streamed ---------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 3])
def test_non_stream_body(server: RunningServer, n: int) -> None:
    body = complete(server, n=n, logit_bias=NO_EOS, max_tokens=7, logprobs=True, top_logprobs=2)
    assert body["object"] == "chat.completion" and body["model"] == server.model
    assert [c["index"] for c in body["choices"]] == list(range(n))
    assert all(c["finish_reason"] == "length" for c in body["choices"])
    usage = body["usage"]
    assert usage["prompt_tokens"] + usage["completion_tokens"] == usage["total_tokens"]
    assert usage["completion_tokens"] == 7 * n
    assert sum(len(c["logprobs"]["content"]) for c in body["choices"]) == usage["completion_tokens"]


def test_non_stream_without_logprobs_has_none(server: RunningServer) -> None:
    body = complete(server)
    assert body["choices"][0].get("logprobs") is None
    assert body["choices"][0]["message"]["role"] == "assistant"


def test_json_mode_gives_json_matching_the_schema(server: RunningServer) -> None:
    schema = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
    body = complete(server, response_format={"type": "json_object", "schema": schema}, max_tokens=50)
    value = json.loads(body["choices"][0]["message"]["content"])
    jsonschema.validate(value, schema)


# ---- streamed -------------------------------------------------------------------------------


def test_stream_framing_and_chunk_consistency(server: RunningServer) -> None:
    reply, chunks = stream(server, n=2)
    assert reply.headers["Content-Type"].startswith("text/event-stream")
    assert len({c["id"] for c in chunks}) == 1
    assert len({c["created"] for c in chunks}) == 1
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert {c["model"] for c in chunks} == {server.model}


def test_stream_first_delta_has_role_and_one_finish_per_choice(server: RunningServer) -> None:
    _, chunks = stream(server, n=3, seed=5)
    started: set[int] = set()
    finished: set[int] = set()
    for chunk in chunks:
        for choice in chunk["choices"]:
            index = choice["index"]
            assert index not in finished, f"choice {index} continued after its finish_reason"
            if index not in started:
                assert choice["delta"].get("role") == "assistant", choice
                started.add(index)
            elif "role" in choice["delta"]:
                pytest.fail(f"role repeated in a later delta of choice {index}")
            if choice.get("finish_reason") is not None:
                finished.add(index)
    assert started == finished == {0, 1, 2}
    assert {i: len(reasons) for i, reasons in finishes_of(chunks).items()} == {0: 1, 1: 1, 2: 1}


def test_stream_usage_only_in_the_very_last_chunk(server: RunningServer) -> None:
    _, chunks = stream(server, n=2, seed=9)
    *rest, last = chunks
    assert last["choices"] == []
    usage = last["usage"]
    assert usage["prompt_tokens"] + usage["completion_tokens"] == usage["total_tokens"]
    assert usage["completion_tokens"] > 0 and usage["prompt_tokens"] > 0
    assert all(c.get("usage") is None for c in rest)
    assert all(c["choices"] for c in rest)


def test_stream_sends_usage_even_when_stream_options_say_no(server: RunningServer) -> None:
    _, chunks = stream(server, stream_options={"include_usage": False})
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] > 0


def test_stream_completion_tokens_equal_tokens_seen_with_logprobs(server: RunningServer) -> None:
    _, chunks = stream(server, n=2, logprobs=True, top_logprobs=3, seed=4, max_tokens=15)
    seen = 0
    for chunk in chunks:
        for choice in chunk["choices"]:
            if choice.get("logprobs"):
                entries = choice["logprobs"]["content"]
                assert all(len(e["top_logprobs"]) == 3 for e in entries)
                seen += len(entries)
    assert seen == chunks[-1]["usage"]["completion_tokens"] > 0


@pytest.mark.parametrize("extra", [{}, {"logit_bias": NO_EOS}, {"temperature": 0.3, "top_k": 5}])
def test_seeded_stream_text_equals_non_stream_text(server: RunningServer, extra: dict[str, Any]) -> None:
    params = {"seed": 1234, "n": 2, "max_tokens": 20, **extra}
    body = complete(server, **params)
    _, chunks = stream(server, **params)
    assert texts_of(chunks) == {c["index"]: c["message"]["content"] for c in body["choices"]}
    reasons = {c["index"]: c["finish_reason"] for c in body["choices"]}
    assert {i: r[0] for i, r in finishes_of(chunks).items()} == reasons
    assert chunks[-1]["usage"] == body["usage"]
    if "temperature" not in extra:  # choices of one seeded request differ (seed + i)
        assert body["choices"][0]["message"]["content"] != body["choices"][1]["message"]["content"]


@pytest.mark.parametrize("streamed", [False, True], ids=["json", "sse"])
def test_stop_taken_from_seeded_output(server: RunningServer, streamed: bool) -> None:
    params = {"seed": 77, "max_tokens": 30, "logit_bias": NO_EOS}
    full = complete(server, **params)["choices"][0]["message"]["content"]
    stop = full[len(full) // 2 : len(full) // 2 + 4]
    expected = full[: full.index(stop) + len(stop)]
    assert len(expected) < len(full)
    if streamed:
        _, chunks = stream(server, stop=[stop, "never-appears"], **params)
        text, reason = texts_of(chunks)[0], finishes_of(chunks)[0]
        assert chunks[-1]["usage"]["completion_tokens"] < 30
    else:
        body = complete(server, stop=stop, **params)
        text, reason = body["choices"][0]["message"]["content"], [body["choices"][0]["finish_reason"]]
        assert body["usage"]["completion_tokens"] < 30
    assert text == expected and text.endswith(stop)
    assert reason == ["stop"]


def test_context_truncation_and_error(server: RunningServer) -> None:
    truncated = complete(server, max_tokens=100_000)
    assert truncated["usage"]["total_tokens"] <= 2048
    error = assert_error(
        call(server, request(server, max_tokens=100_000, context_length_exceeded_behavior="error")), 400, "max_tokens"
    )
    assert error["code"] == "context_length_exceeded"
    too_long = [{"role": "user", "content": "word " * 2100}]
    assert_error(call(server, request(server, messages=too_long)), 400, "messages")


# ---- errors ---------------------------------------------------------------------------------


def test_missing_key_is_401(server: RunningServer) -> None:
    reply = call(server, request(server), auth=False)
    error = assert_error(reply, 401)
    assert error["type"] == "authentication_error"
    assert reply.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize("header", ["Bearer wrong-key", "Basic dXNlcjpwYXNz", "Bearer", "Bearer  ", "wrong-key"])
def test_wrong_key_is_401(server: RunningServer, header: str) -> None:
    assert_error(call(server, request(server), auth=header), 401)


def test_bearer_scheme_is_case_insensitive(server: RunningServer) -> None:
    assert call(server, request(server), auth=f"bearer {server.api_key}").status == 200


def test_models_need_the_key(server: RunningServer) -> None:
    assert_error(call(server, method="GET", path=MODELS, auth=False), 401)


def test_no_auth_server_works_without_a_key(open_server: RunningServer) -> None:
    assert open_server.api_key is None
    reply = call(open_server, request(open_server), auth=False)
    assert reply.status == 200 and RESPONSE.is_valid(reply.json())
    assert call(open_server, method="GET", path=MODELS, auth=False).status == 200


@pytest.mark.parametrize(
    "raw",
    [b"{bad json", b"", b"\xff\xfe\x00", b'{"model": "mock",', b"[1, 2"],
    ids=["syntax", "empty", "bytes", "cut", "list"],
)
def test_malformed_json_is_400(server: RunningServer, raw: bytes) -> None:
    assert_error(call(server, raw=raw), 400)


@pytest.mark.parametrize("payload", [[], "text", 5, None], ids=["list", "string", "number", "null"])
def test_non_object_json_is_400(server: RunningServer, payload: Any) -> None:
    assert_error(call(server, raw=json.dumps(payload).encode()), 400)


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data"])
def test_wrong_content_type_is_415(server: RunningServer, content_type: str) -> None:
    reply = call(server, raw=json.dumps(request(server)).encode(), headers={"Content-Type": content_type})
    assert_error(reply, 415)


def test_json_content_type_with_charset_is_accepted(server: RunningServer) -> None:
    reply = call(server, request(server), headers={"Content-Type": "application/json; charset=utf-8"})
    assert reply.status == 200


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
@pytest.mark.parametrize("size", [2500, 50_000])
def test_body_over_the_limit_is_413(tight_server: RunningServer, chunked: bool, size: int) -> None:
    payload = request(tight_server, user="x" * size)
    assert_error(call(tight_server, payload, chunked=chunked), 413)


def test_body_under_the_limit_is_fine(tight_server: RunningServer) -> None:
    payload = request(tight_server, user="x" * 1000, max_tokens=2)
    assert len(json.dumps(payload)) < 2000
    assert call(tight_server, payload).status == 200


def test_unknown_model_is_404(server: RunningServer) -> None:
    error = assert_error(call(server, request(server, model="no-such-model")), 404, "model")
    assert error["code"] == "model_not_found"


@pytest.mark.parametrize("path", ["/nope", "/v3/openai/completions", "/v1/completions"])
def test_unknown_route_is_404_in_the_envelope(server: RunningServer, path: str) -> None:
    assert_error(call(server, request(server), path=path), 404)


def test_wrong_method_is_an_enveloped_4xx(server: RunningServer) -> None:
    reply = call(server, method="GET", path=CHAT)
    assert 400 <= reply.status < 500
    assert_error(reply, reply.status)


def _outside(rng: spec.ParamRange) -> float:
    if rng.exclusive_maximum is not None:
        return rng.exclusive_maximum
    if rng.maximum is not None:
        return rng.maximum + 1
    if rng.exclusive_minimum is not None:
        return rng.exclusive_minimum
    return rng.minimum - 1


@pytest.mark.parametrize("path", sorted(spec.parameter_ranges()))
def test_out_of_range_is_400_naming_the_parameter(server: RunningServer, path: str) -> None:
    rng = spec.parameter_ranges()[path]
    value = _outside(rng)
    if path == "logit_bias.*":
        payload = request(server, logit_bias={"1": value})
    else:
        payload = request(server, **{path: value}, logprobs=True)
    error = assert_error(call(server, payload), 400, path.split(".")[0])
    assert error["type"] == "invalid_request_error"


@pytest.mark.parametrize("field", ["model", "messages", "max_tokens"])
def test_missing_required_field_is_400_naming_it(server: RunningServer, field: str) -> None:
    payload = request(server)
    del payload[field]
    assert_error(call(server, payload), 400, field)


def test_error_cases_are_fixed_statuses(server: RunningServer) -> None:
    assert_error(call(server, request(server, top_logprobs=2)), 400, "top_logprobs")
    assert_error(call(server, request(server, stop=["a", "b", "c", "d", "e"])), 400, "stop")
    assert_error(call(server, request(server, logit_bias={"999999": 1})), 400, "logit_bias")


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_number_literals_are_refused(server: RunningServer, literal: str) -> None:
    raw = json.dumps(request(server)).encode()[:-1] + f', "frequency_penalty": {literal}}}'.encode()
    assert_error(call(server, raw=raw), 400, "frequency_penalty")


def test_nan_temperature_is_a_400_not_a_500(server: RunningServer) -> None:
    raw = json.dumps(request(server)).encode()[:-1] + b', "temperature": NaN}'
    assert_error(call(server, raw=raw), 400, "temperature")


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)
REQUEST_PROPERTIES = sorted(spec.request_schema()["properties"])


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(REQUEST_PROPERTIES), value=JSON_VALUES)
def test_never_5xx_for_any_value_of_any_parameter(server: RunningServer, name: str, value: Any) -> None:
    payload = request(server, max_tokens=4)
    payload[name] = value
    reply = call(server, payload)
    assert reply.status < 500, (name, value, reply.data[:300])
    if reply.status != 200:
        assert reply.status in (400, 404)
        assert_error(reply, reply.status, name)
        assert reply.status == 400 or name == "model"


# ---- queue, disconnects, health, models -----------------------------------------------------


def _health(server: RunningServer) -> dict[str, Any]:
    reply = call(server, method="GET", path="/health", auth=False)
    assert reply.status == 200
    return reply.json()


def test_queue_full_is_429_and_a_disconnect_frees_the_slot(tight_server: RunningServer) -> None:
    before = server_counts(tight_server.base_url)
    conn = http.client.HTTPConnection(_host(tight_server), timeout=30)
    payload = request(tight_server, stream=True, max_tokens=200, logit_bias=NO_EOS)  # ~10 s at 50 ms a token
    conn.request("POST", CHAT, body=json.dumps(payload), headers=_headers(tight_server, True, None))
    response = conn.getresponse()
    assert response.status == 200
    assert response.readline().startswith(b"data: ")  # the stream is open and counted
    assert _health(tight_server)["in_flight"] == 1

    busy = call(tight_server, request(tight_server, max_tokens=2))
    error = assert_error(busy, 429)
    assert error["type"] == "rate_limit_error"
    assert int(busy.headers["Retry-After"]) >= 0

    # The client walks away mid-stream; judged by what the server counted once it let go (the
    # abandoned stream would run on for 200 tokens, ~10 s, if it kept the slot).
    conn.sock.shutdown(socket.SHUT_RDWR)
    response.close()
    conn.close()
    deadline = time.monotonic() + 30
    while _health(tight_server)["in_flight"] and time.monotonic() < deadline:
        time.sleep(0.05)
    counted = counts_since(before, server_counts(tight_server.base_url))
    assert _health(tight_server)["in_flight"] == 0 and counted["running"] == 0 and counted["waiting"] == 0, counted
    assert counted["answered_in_full"] == 0 and counted["generation_tokens"] < 100, counted
    assert call(tight_server, request(tight_server, max_tokens=2)).status == 200, "the slot is free"


def test_health(server: RunningServer) -> None:
    health = _health(server)
    assert health["status"] == "ok" and health["model"] == server.model


def test_models_list(server: RunningServer) -> None:
    reply = call(server, method="GET", path=MODELS)
    assert reply.status == 200
    body = reply.json()
    assert MODEL_LIST.is_valid(body), body
    assert server.model in [m["id"] for m in body["data"]]


# ---- the command line -----------------------------------------------------------------------


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "CHATSPEC_API_KEYS"}
    return subprocess.run(
        [sys.executable, "-m", "reference_server", *args], capture_output=True, text=True, env=env, timeout=60
    )


def test_cli_help() -> None:
    result = _cli("--help")
    assert result.returncode == 0
    for flag in ("--engine", "--api-key", "--no-auth", "--max-queue", "--max-body-bytes"):
        assert flag in result.stdout, flag


def test_cli_refuses_to_start_without_a_key() -> None:
    result = _cli("--engine", "mock", "--port", "0")
    assert result.returncode != 0
    assert "--api-key" in result.stderr


def test_cli_key_and_no_auth_are_exclusive() -> None:
    result = _cli("--engine", "mock", "--port", "0", "--api-key", "k", "--no-auth")
    assert result.returncode != 0
    assert "--no-auth" in result.stderr


def test_outside_values_really_are_outside() -> None:
    """_outside really lies outside every range (guards the out-of-range test above)."""
    for rng in spec.parameter_ranges().values():
        assert not rng.contains(_outside(rng)) and not math.isnan(_outside(rng))
