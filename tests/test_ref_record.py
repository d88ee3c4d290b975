"""`python -m reference_server --record PATH`: one line per chat request received, refusals included,
with the arrival and end on the server's clock, from one process or several (--workers)."""

from __future__ import annotations

import http.client
import json
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from oracle import in_flight, prompt_text, read_records

from reference_server.launcher import RunningServer, running_server

TTFT_MS, ITL_MS = 40.0, 5.0
CHAT = "/v3/openai/chat/completions"


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningServer, Path]]:
    path = tmp_path_factory.mktemp("record") / "requests.jsonl"
    with running_server("--ttft-ms", str(TTFT_MS), "--itl-ms", str(ITL_MS), "--record", str(path),
                        engine="mock") as server:
        yield server, path


def post(server: RunningServer, body: Any, *, path: str = CHAT, key: str | None = None, raw: bytes | None = None,
         ) -> tuple[int, bytes]:
    """One POST on a fresh connection; (status, the whole answer)."""
    conn = http.client.HTTPConnection(server.base_url.removeprefix("http://"), timeout=30)
    try:
        conn.request("POST", path, body=raw if raw is not None else json.dumps(body).encode(),
                     headers={"Content-Type": "application/json", "Authorization": f"Bearer {key or server.api_key}"})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def chat(server: RunningServer, text: str, max_tokens: int = 3, **extra: Any) -> dict[str, Any]:
    return {"model": server.model, "max_tokens": max_tokens, "logit_bias": {"0": -100},
            "messages": [{"role": "user", "content": text}], **extra}


def new_lines(path: Path, before: int) -> list[dict[str, Any]]:
    """The records written since the file had `before` lines, in arrival order."""
    records = read_records(path, settle_s=0.2)
    return records[before:] if before else records


def count(path: Path) -> int:
    return len(read_records(path, settle_s=0.0)) if path.exists() else 0


def test_each_request_is_recorded_in_order_with_its_body_and_times(recorded):
    server, path = recorded
    before = count(path)
    sent, ids, windows = [], [], []
    for index in range(5):
        body = chat(server, f"request number {index}", max_tokens=2 + index, stream=index % 2 == 1)
        start = time.time_ns()
        status, answer = post(server, body)
        windows.append((start, time.time_ns()))
        assert status == 200
        sent.append(body)
        text = answer.decode()
        ids.append(json.loads(text)["id"] if not body["stream"] else json.loads(text.split("data: ")[1])["id"])
    records = new_lines(path, before)
    assert [r["body"] for r in records] == sent
    assert [r["response_id"] for r in records] == ids
    assert all(r["status"] == 200 and r["path"] == CHAT and not r["client_gone"] for r in records)
    for record, (start, done), body in zip(records, windows, sent, strict=True):
        assert start <= record["arrival_ns"] <= record["end_ns"]
        assert record["arrival_ns"] <= done  # nothing arrives after its answer came back
        # the answer takes the mock's time: TTFT, then a gap per further token
        assert (record["end_ns"] - record["arrival_ns"]) / 1e6 >= TTFT_MS + (body["max_tokens"] - 1) * ITL_MS
    assert len({r["pid"] for r in records}) == 1 and all(r["client"].startswith("127.0.0.1:") for r in records)


def test_refusals_are_recorded_with_their_status(recorded):
    server, path = recorded
    before = count(path)
    assert post(server, chat(server, "wrong key"), key="wrong")[0] == 401
    assert post(server, None, raw=b'{"model": "mock", "messages": [')[0] == 400
    assert post(server, chat(server, "too many", max_tokens=-1))[0] == 400
    assert post(server, chat(server, "over /v1"), path="/v1/chat/completions")[0] == 200
    conn = http.client.HTTPConnection(server.base_url.removeprefix("http://"), timeout=30)
    conn.request("GET", "/health")
    assert conn.getresponse().status == 200  # not a chat path: not recorded
    conn.close()
    records = new_lines(path, before)
    assert [(r["status"], r["path"]) for r in records] == [(401, CHAT), (400, CHAT), (400, CHAT),
                                                           (200, "/v1/chat/completions")]
    assert prompt_text(records[0]["body"]) == "wrong key"  # refused before the body was read: recorded anyway
    assert records[1]["body"] == '{"model": "mock", "messages": ['  # not JSON: the raw text
    assert records[2]["body"]["max_tokens"] == -1 and records[2]["response_id"] is None


def test_concurrent_requests_overlap_in_the_record(recorded):
    server, path = recorded
    before = count(path)
    with ThreadPoolExecutor(6) as pool:
        statuses = list(pool.map(lambda i: post(server, chat(server, f"together {i}", max_tokens=20))[0], range(6)))
    assert statuses == [200] * 6
    records = new_lines(path, before)
    assert sorted(prompt_text(r["body"]) for r in records) == sorted(f"together {i}" for i in range(6))
    # each takes >= 40 + 19 * 5 ms and all six were sent at once: the server held all six together
    start, end = max(r["arrival_ns"] for r in records), min(r["end_ns"] for r in records)
    assert start < end and in_flight(records, start, end).max == 6


def test_a_client_that_leaves_mid_stream_is_recorded_as_gone(recorded):
    server, path = recorded
    before = count(path)
    body = json.dumps(chat(server, "leaving", max_tokens=400, stream=True)).encode()
    host, port = server.base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(f"POST {CHAT} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     f"Authorization: Bearer {server.api_key}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")  # the stream began
        left = time.time_ns()
    records = new_lines(path, before)
    assert len(records) == 1 and records[0]["client_gone"] and records[0]["body"]["max_tokens"] == 400
    # it ended when the client left, long before its 400 tokens (2 s) were due
    assert records[0]["end_ns"] - left < 1e9


def test_workers_share_one_record_file_without_mixing_lines(tmp_path):
    path = tmp_path / "record.jsonl"
    with running_server("--ttft-ms", "5", "--itl-ms", "1", "--workers", "2", "--record", str(path),
                        engine="mock") as server:
        texts = [f"worker request {i} " + "word " * 200 for i in range(60)]  # long lines: ~1.3 kB each
        with ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(lambda text: post(server, chat(server, text, max_tokens=4))[0], texts))
        assert statuses == [200] * 60
        records = read_records(path)  # every line parses: none torn or interleaved
    assert sorted(prompt_text(r["body"]) for r in records) == sorted(texts)
    assert len({r["pid"] for r in records}) == 2  # both processes served (60 connections over two)
    assert len({r["response_id"] for r in records}) == 60
