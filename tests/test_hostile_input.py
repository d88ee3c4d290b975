"""Hostile input never gets a 5xx: every hand-made hostile body (conformance.hostile) against the mock
server, each refused in the envelope naming its parameter; the regressions one by one; raw-socket
faults (a stalled body, a body longer than its Content-Length)."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator

import pytest
import requests

from conformance.hostile import HostileRequest, envelope_problem, fixed_families
from reference_server.launcher import RunningServer, running_server
from reference_server.transport import MAX_NESTING, unusable_field

CHAT = "/v3/openai/chat/completions"


@pytest.fixture(scope="module")
def mock() -> Iterator[RunningServer]:
    with running_server("--ttft-ms", "0", "--itl-ms", "0", "--body-timeout", "1", engine="mock",
                        api_key=None) as server:
        yield server


def post(server: RunningServer, body: bytes) -> requests.Response:
    return requests.post(server.base_url + CHAT, data=body, headers={"Content-Type": "application/json"},
                         timeout=60)


def test_every_hand_made_hostile_body_is_refused_in_the_envelope(mock: RunningServer) -> None:
    problems = []
    families = set()
    with requests.Session() as session:
        for item in fixed_families("mock"):
            families.add(item.family)
            response = session.post(mock.base_url + CHAT, data=item.body,
                                    headers={"Content-Type": "application/json"}, timeout=60)
            problem = envelope_problem(response.status_code, response.content, item)
            if problem:
                problems.append((item.family, problem, item.body[:100]))
    assert not problems, problems[:10]
    assert {"deep_nesting", "nan_infinity", "invalid_utf8", "lone_surrogate", "wrong_type", "huge_integer",
            "duplicate_keys", "huge_string", "not_an_object"} <= families
    assert post(mock, json.dumps({"model": "mock", "max_tokens": 2,
                                  "messages": [{"role": "user", "content": "hi"}]}).encode()).status_code == 200


@pytest.mark.parametrize(("body", "param"), [
    (b"[" * 5000 + b"]" * 5000, None),  # past Python's own decoder: RecursionError, was a 500
    (b'{"model": "mock", "max_tokens": 2, "messages": ' + b"[" * 300 + b"]" * 300 + b"}", "messages"),
    (b'{"model": "mock", "max_tokens": 2, "messages": [{"role": "user", "content": "a\\ud800"}]}', "messages"),
])
def test_regressions_that_were_500_or_200(mock: RunningServer, body: bytes, param: str | None) -> None:
    response = post(mock, body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


def test_encoded_surrogates_are_not_utf8(mock: RunningServer) -> None:
    body = b'{"model": "mock", "max_tokens": 2, "messages": [{"role": "user", "content": "a\xed\xa0\x80"}]}'
    response = post(mock, body)
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_json"


def test_unusable_field_walks_without_recursion() -> None:
    deep: list = []
    node = deep
    for _ in range(100_000):  # far past any recursion limit
        node.append([])
        node = node[0]
    assert unusable_field({"messages": deep}, MAX_NESTING) == ("messages", f"is nested more than {MAX_NESTING} "
                                                                           "levels deep")
    assert unusable_field({"stop": ["ok", {"x": "\udc80"}]}, MAX_NESTING)[0] == "stop"
    assert unusable_field({"a\ud800": 1}, MAX_NESTING)[0] == "a\\ud800"
    assert unusable_field({"messages": [[[]]]}, MAX_NESTING) is None


def _raw(server: RunningServer, payload: bytes, wait_s: float) -> tuple[bytes, float]:
    """What comes back for raw bytes: the first reply (up to wait_s) and the seconds until it came."""
    host, port = "127.0.0.1", int(server.base_url.rsplit(":", 1)[1])
    start = time.monotonic()
    with socket.create_connection((host, port), timeout=wait_s) as sock:
        sock.sendall(payload)
        try:
            reply = sock.recv(65536)
        except TimeoutError:
            reply = b""
    return reply, time.monotonic() - start


HEAD = b"POST " + CHAT.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"


def test_a_stalled_body_gets_408_at_the_body_timeout_and_connection_close(mock: RunningServer) -> None:
    reply, seconds = _raw(mock, HEAD + b"Content-Length: 200\r\n\r\n{\"model\"", wait_s=10)
    assert reply.startswith(b"HTTP/1.1 408 "), reply[:200]
    assert b'"code": "request_timeout"' in reply
    assert b"\r\nConnection: close\r\n" in reply  # what is left of that body is no next request
    assert 1 <= seconds < 5  # --body-timeout 1


def test_bytes_past_the_content_length_never_get_a_5xx(mock: RunningServer) -> None:
    body = json.dumps({"model": "mock", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]}).encode()
    reply, _ = _raw(mock, HEAD + b"Content-Length: 5\r\n\r\n" + body, wait_s=3)
    assert reply[9:12] == b"400", reply[:200]


def test_envelope_problem_judges_what_it_names() -> None:
    item = HostileRequest("wrong_type", b"{}", "temperature")
    good = json.dumps({"error": {"message": "m", "type": "invalid_request_error", "param": "temperature",
                                 "code": "x"}}).encode()
    assert envelope_problem(400, good, item) is None
    assert envelope_problem(500, good, item) == "HTTP 500"
    assert envelope_problem(200, b"{}", item) == "HTTP 200: accepted"
    assert "expected 'temperature'" in envelope_problem(400, good.replace(b'"temperature"', b'"top_p"'), item)
    assert "without the error envelope" in envelope_problem(400, b"nope", item)
