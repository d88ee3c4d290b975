"""Addressing any endpoint: an API root in --base-url, --header, --model from /models; the same rule
in `python -m conformance` and `python -m load`, and the reference server answering under /v1 too."""

from __future__ import annotations

import contextlib
import http.server
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from oracle import RecordFile, load_requests

from reference_server.launcher import RunningServer, running_server
from spec import endpoint

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(("base_url", "chat", "models"), [
    ("http://h:8000", "http://h:8000/v3/openai/chat/completions", "http://h:8000/v3/openai/models"),
    ("http://h:8000/", "http://h:8000/v3/openai/chat/completions", "http://h:8000/v3/openai/models"),
    ("http://h:8000/v1", "http://h:8000/v1/chat/completions", "http://h:8000/v1/models"),
    ("http://h:8000/v1/", "http://h:8000/v1/chat/completions", "http://h:8000/v1/models"),
    ("https://api.example.com/v3/openai", "https://api.example.com/v3/openai/chat/completions",
     "https://api.example.com/v3/openai/models"),
    ("http://h/v1/chat/completions", "http://h/v1/chat/completions", "http://h/v1/models"),
    ("http://h/chat/completions", "http://h/chat/completions", "http://h/models"),
])
def test_base_url_names_the_api_root(base_url: str, chat: str, models: str) -> None:
    where = endpoint.resolve(base_url)
    assert (where.chat_url, where.models_url) == (chat, models)


@pytest.mark.parametrize("bad", ["127.0.0.1:8000", "ftp://h/v1", "http://h/v1?x=1", "http:///v1"])
def test_a_base_url_that_is_no_http_url_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="--base-url"):
        endpoint.resolve(bad)


def test_headers_parse_and_bad_ones_are_named() -> None:
    assert endpoint.parse_headers(["api-key: abc", "X-Team:  a: b "]) == {"api-key": "abc", "X-Team": "a: b"}
    for bad in ("no colon", "bad name: x", ": x"):
        with pytest.raises(ValueError, match="Name: value"):
            endpoint.parse_headers([bad])


@contextlib.contextmanager
def models_server(listing: object) -> Iterator[str]:
    """A loopback server whose every GET answers `listing` as JSON (an endpoint with several models)."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            body = json.dumps(listing).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()


def test_model_is_needed_when_models_lists_several() -> None:
    with models_server({"object": "list", "data": [{"id": "a"}, {"id": "b"}]}) as base:
        with pytest.raises(endpoint.ModelUnknown, match="lists 2 models: a, b; pass --model"):
            endpoint.served_model(endpoint.resolve(base), {})
        for tool in ("conformance", "load"):
            out = subprocess.run([sys.executable, "-m", tool, "--base-url", base], capture_output=True, text=True,
                                 timeout=120, cwd=ROOT)
            assert out.returncode == 2, (tool, out.stderr)
            assert "lists 2 models" in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
    with models_server({"object": "list", "data": [{"id": "only"}]}) as base:
        assert endpoint.served_model(endpoint.resolve(base), {}) == "only"


@pytest.fixture(scope="module")
def record(tmp_path_factory: pytest.TempPathFactory) -> RecordFile:
    """What the mock server received (its --record file)."""
    return RecordFile(tmp_path_factory.mktemp("record") / "record.jsonl")


@pytest.fixture(scope="module")
def mock(record: RecordFile) -> Iterator[RunningServer]:
    with running_server("--ttft-ms", "0", "--itl-ms", "0", "--max-queue", "1000", "--record", str(record.path),
                        engine="mock") as server:
        yield server


def test_reference_server_answers_under_v1_too(mock: RunningServer) -> None:
    headers = {"Authorization": f"Bearer {mock.api_key}"}
    for root in ("/v3/openai", "/v1"):
        listed = requests.get(f"{mock.base_url}{root}/models", headers=headers, timeout=30)
        assert listed.status_code == 200 and listed.json()["data"][0]["id"] == mock.model
        chat = requests.post(f"{mock.base_url}{root}/chat/completions", headers=headers, timeout=30, json={
            "model": mock.model, "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]})
        assert chat.status_code == 200 and chat.json()["object"] == "chat.completion"


def test_conformance_at_an_api_root_with_a_header_and_no_model(mock: RunningServer, tmp_path: Path) -> None:
    """The key travels only in --header; the model comes from /v1/models; every request goes to /v1."""
    out = subprocess.run([sys.executable, "-m", "conformance", "--base-url", mock.base_url + "/v1",
                          "--header", f"Authorization: Bearer {mock.api_key}", "--max-examples", "3",
                          "-k", "usage or streaming or fuzz_positive", "--report-dir", str(tmp_path)],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
    raw = (tmp_path / "conformance.json").read_text()
    data = json.loads(raw)
    assert data["target"]["chat_url"] == mock.base_url + "/v1/chat/completions"
    assert data["target"]["model"] == mock.model
    assert data["summary"]["passed"] >= 10
    assert mock.api_key not in raw


def test_conformance_report_hides_header_values(mock: RunningServer, tmp_path: Path) -> None:
    secret = "header-secret-1234"
    out = subprocess.run([sys.executable, "-m", "conformance", "--base-url", mock.base_url + "/v1",
                          "--api-key", mock.api_key, "--header", f"X-Gateway-Key: {secret}", "--profile", "openai",
                          "-k", "ranges.temperature.inclusive_min_end", "--report-dir", str(tmp_path)],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 1, out.stdout + out.stderr  # a failure, so the report carries the request
    check = json.loads((tmp_path / "conformance.json").read_text())["checks"][0]
    assert check["request"]["headers"]["X-Gateway-Key"] == "$HEADER_VALUE"
    assert '"X-Gateway-Key: $HEADER_VALUE"' in check["curl"]
    assert secret not in (tmp_path / "conformance.json").read_text()


def test_load_at_an_api_root_with_a_header_and_no_model(mock: RunningServer, record: RecordFile,
                                                       tmp_path: Path) -> None:
    mark = record.mark()
    out = subprocess.run([sys.executable, "-m", "load", "--quiet", "--base-url", mock.base_url + "/v1",
                          "--header", f"Authorization: Bearer {mock.api_key}", "--users", "2", "--duration", "3",
                          "--warmup", "0", "--max-requests", "6", "--output-tokens", "4",
                          "--report-dir", str(tmp_path)], capture_output=True, text=True, timeout=180, cwd=ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
    doc = json.loads((tmp_path / "load.json").read_text())
    assert doc["target"]["path"] == "/v1/chat/completions" and doc["target"]["model"] == mock.model
    step = doc["steps"][0]["metrics"]
    assert step["requests_ok"] == 6 and step["requests_failed"] == 0
    arrived = load_requests(record.since(mark))  # the server's word: the six asked, all under /v1, all answered
    assert [(r["path"], r["status"]) for r in arrived] == [("/v1/chat/completions", 200)] * 6
    assert all(r["body"]["model"] == mock.model for r in arrived)
