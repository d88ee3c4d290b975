"""The auth, error, streaming and usage checks: all pass on the reference server (mock engine),
and each can fail: an in-process fake API, correct unless told to break one rule, makes the
matching check fail with evidence (a curl line and a response excerpt)."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import socket
import struct
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp import web

from conformance import registry
from conformance.context import Context
from conformance.registry import Check
from conformance.runner import run_one
from conformance.target import Target
from reference_server.launcher import RunningServer, running_server
from reports import CheckResult

MODULES = ("conformance.checks.errors", "conformance.checks.streaming", "conformance.checks.usage")
IDS = (
    "auth.missing_key", "auth.wrong_key",
    "errors.malformed_json", "errors.wrong_content_type", "errors.unknown_model", "errors.oversized_body",
    "errors.missing_required", "errors.non_object_body", "errors.error_before_stream",
    "streaming.content_type", "streaming.framing", "streaming.chunk_schema", "streaming.constant_fields",
    "streaming.role_first", "streaming.finish_reason_once", "streaming.done_once_last", "streaming.utf8_split",
    "streaming.no_replacement_char",
    "streaming.line_endings",
    "usage.nonstream_present", "usage.totals_add_up", "usage.max_tokens_bound", "usage.stream_last_chunk_only",
    "usage.matches_stream_tokens", "usage.matches_logprobs_nonstream",
)


def my_checks(target: Target) -> dict[str, Check]:
    return {item.id: item for item in registry.collect(target, modules=MODULES)}


def run_fresh(target: Target, ids: tuple[str, ...] | list[str]) -> dict[str, CheckResult]:
    """Each check in its own Context, so no memoized stream is shared."""
    checks = my_checks(target)
    results = {}
    for check_id in ids:
        ctx = Context(target)
        try:
            results[check_id] = run_one(checks[check_id], ctx)
        finally:
            ctx.client.close()
    return results


def not_passed(results: dict[str, CheckResult]) -> dict[str, str]:
    return {r.id: f"{r.outcome}: {r.message}" for r in results.values() if r.outcome != "passed"}


# ---- the reference server ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    with running_server("--ttft-ms", "0", "--itl-ms", "0", engine="mock") as running:
        yield running


def reference_target(server: RunningServer, **options: Any) -> Target:
    return Target(base_url=server.base_url, api_key=server.api_key, model=server.model, timeout_s=60, **options)


def test_the_ids_are_the_agreed_ones(server: RunningServer) -> None:
    checks = my_checks(reference_target(server))
    assert sorted(checks) == sorted(IDS)
    assert {item.feature for item in checks.values()} == {"auth", "errors", "streaming", "usage"}


def test_all_pass_on_the_reference_in_one_context(server: RunningServer) -> None:
    target = reference_target(server)
    checks = my_checks(target)
    ctx = Context(target)
    try:
        results = {check_id: run_one(checks[check_id], ctx) for check_id in IDS}
    finally:
        ctx.client.close()
    assert not not_passed(results)


def test_all_pass_on_the_reference_each_alone(server: RunningServer) -> None:
    assert not not_passed(run_fresh(reference_target(server), IDS))


def test_without_a_key_auth_is_skipped() -> None:
    with running_server("--ttft-ms", "0", "--itl-ms", "0", engine="mock", api_key=None) as open_server:
        target = Target(base_url=open_server.base_url, api_key=None, model=open_server.model, timeout_s=60)
        results = run_fresh(target, ["auth.missing_key", "auth.wrong_key", "errors.unknown_model"])
    assert results["auth.missing_key"].outcome == "skipped"
    assert results["auth.missing_key"].message == "no API key given"
    assert results["auth.wrong_key"].outcome == "skipped"
    assert results["errors.unknown_model"].outcome == "passed"


def test_declared_unsupported_features(server: RunningServer) -> None:
    results = run_fresh(reference_target(server, skip_features=frozenset({"logprobs", "n", "seed"})), IDS)
    assert results["usage.matches_stream_tokens"].outcome == "not_supported"
    assert results["usage.matches_logprobs_nonstream"].outcome == "not_supported"
    assert results["streaming.no_replacement_char"].outcome == "not_supported"  # compares seeded runs
    # without n the per-choice stream rules still run, on an n=1 stream
    relying = ("usage.matches", "streaming.no_replacement_char")
    assert {k: v for k, v in not_passed(results).items() if not k.startswith(relying)} == {}


# ---- a fake API that breaks one rule at a time ----------------------------------------------------

KEY = "fake-key-1234"
MODEL = "fake-model"
TOKENS = ("Hi", " café", " über", " 日本", " 🙂", ".")
PROMPT_TOKENS = 11
MAX_BODY = 1 << 20
HEAD = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1700000000, "model": MODEL}


def envelope(status: int, message: str, param: str | None = None) -> web.Response:
    body = {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": None}}
    return web.json_response(body, status=status)


def logprob(token: str) -> dict[str, Any]:
    return {"token": token, "logprob": -0.25, "bytes": list(token.encode("utf-8")), "top_logprobs": []}


def dump(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


class FakeAPI:
    """A small correct chat-completions server; each name in `faults` breaks one rule."""

    def __init__(self) -> None:
        self.faults: set[str] = set()
        self.url = ""
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, name="fake-api", daemon=True)

    # -- lifecycle
    def __enter__(self) -> FakeAPI:
        self._thread.start()
        assert self._ready.wait(10), "fake API did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def start() -> None:
            app = web.Application(client_max_size=64 * 1024 * 1024)
            app.router.add_post("/v3/openai/chat/completions", self.handle)
            self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1)
            await self._runner.setup()
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
            await site.start()
            self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"

        self._loop.run_until_complete(start())
        self._ready.set()
        self._loop.run_forever()

    # -- request handling
    async def handle(self, request: web.Request) -> web.StreamResponse:
        faults = self.faults
        if "no_auth" not in faults and request.headers.get("Authorization") != f"Bearer {KEY}":
            return envelope(401, "bad or missing key")
        if "any_content_type" not in faults and request.content_type != "application/json":
            return envelope(415, "send application/json")
        if "no_size_cap" not in faults and (request.content_length or 0) > MAX_BODY:
            return envelope(413, "body too large")
        try:
            body = json.loads(await request.read())
        except ValueError:
            return envelope(500 if "bad_json_500" in faults else 400, "not JSON")
        if not isinstance(body, dict):
            return envelope(500 if "array_500" in faults else 400, "not an object")
        for name in ("model", "messages", "max_tokens"):
            if name not in body:
                if name == "max_tokens" and "missing_max_tokens_ok" in faults:
                    body["max_tokens"] = 16
                else:
                    return envelope(400, f"{name} is required", None if "unnamed_param" in faults else name)
        if body["model"] != MODEL and "any_model" not in faults:
            return envelope(404, "no such model", "model")
        max_tokens = body["max_tokens"]
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            if body.get("stream") and "error_streamed" in faults:
                return await self.write_stream(request, [{"error": {"message": "bad max_tokens"}}, "[DONE]"])
            return envelope(400, "max_tokens must be an integer >= 1", "max_tokens")
        limit = len(TOKENS) if "ignores_max_tokens" in faults else max_tokens
        choices = [list(TOKENS[:limit]) for _ in range(body.get("n") or 1)]
        if body.get("stream"):
            return await self.write_stream(request, self.stream_items(choices, max_tokens, bool(body.get("logprobs"))))
        return self.completion(choices, max_tokens, bool(body.get("logprobs")))

    def usage(self, choices: list[list[str]]) -> dict[str, int]:
        completion = sum(len(tokens) for tokens in choices)
        usage = {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": completion,
                 "total_tokens": PROMPT_TOKENS + completion}
        if "totals_wrong" in self.faults:
            usage["total_tokens"] += 1
        return usage

    def completion(self, choices: list[list[str]], max_tokens: int, with_logprobs: bool) -> web.Response:
        body: dict[str, Any] = {
            **HEAD, "object": "chat.completion",
            "choices": [{"index": i, "message": {"role": "assistant", "content": "".join(tokens)},
                         "finish_reason": "length" if len(tokens) >= max_tokens else "stop",
                         "logprobs": {"content": [logprob(t) for t in tokens]} if with_logprobs else None}
                        for i, tokens in enumerate(choices)],
            "usage": self.usage(choices),
        }
        if "json_usage_off_by_one" in self.faults:
            body["usage"]["completion_tokens"] += 1
            body["usage"]["total_tokens"] += 1
        if "no_usage" in self.faults:
            del body["usage"]
        return web.Response(body=dump(body), content_type="application/json")

    def stream_items(self, choices: list[list[str]], max_tokens: int, with_logprobs: bool) -> list[Any]:
        faults = self.faults
        items: list[Any] = []
        for i, tokens in enumerate(choices):
            first_delta = {"content": ""} if "no_role" in faults else {"role": "assistant", "content": ""}
            items.append({**HEAD, "choices": [{"index": i, "delta": first_delta, "finish_reason": None}]})
            for token in tokens:
                if "fffd_stream" in faults:
                    token = token.replace("é", "\ufffd")
                items.append({**HEAD, "choices": [{
                    "index": i, "delta": {"content": token}, "finish_reason": None,
                    "logprobs": {"content": [logprob(token)]} if with_logprobs else None}]})
            finish = {**HEAD, "choices": [{"index": i, "delta": {},
                                           "finish_reason": "length" if len(tokens) >= max_tokens else "stop"}]}
            if not (i == 1 and "missing_finish_1" in faults):
                items.append(finish)
            if i == 0 and "two_finish" in faults:
                items.append(copy.deepcopy(finish))
        usage = self.usage(choices)
        if "stream_usage_off_by_one" in faults:
            usage["completion_tokens"] += 1
            usage["total_tokens"] += 1
        items.append({**HEAD, "choices": [], "usage": usage})
        if "usage_middle" in faults:
            items.pop()
            items[len(items) // 2]["usage"] = usage
        if "usage_every_chunk" in faults:
            for item in items:
                item["usage"] = usage
        if "usage_with_choices" in faults:
            items.pop()
            items[-1]["usage"] = usage
        if "no_usage" in faults:
            items.pop()
        if "bad_chunk" in faults:
            items[1]["created"] = "yesterday"
        if "inconsistent_id" in faults:
            items[2]["id"] = "chatcmpl-other"
        items.append("[DONE]")
        if "no_done" in faults:
            items.pop()
        if "two_done" in faults:
            items.append("[DONE]")
        if "data_after_done" in faults:
            items.append(items[1])
        return items

    async def write_stream(self, request: web.Request, items: list[Any]) -> web.StreamResponse:
        faults = self.faults
        kind = "application/json" if "json_stream_ct" in faults else "text/event-stream"
        response = web.StreamResponse(headers={"Content-Type": f"{kind}; charset=utf-8"})
        await response.prepare(request)
        eol = b"\r" if "cr_only" in faults else b"\n"
        for number, item in enumerate(items):
            payload = item.encode() if isinstance(item, str) else dump(item)
            end = b"\r\n" if number == 0 and "mixed_eol" in faults else eol
            if "utf8_split" in faults and b"\xc3\xa9" in payload:
                head, _, rest = payload.partition(b"\xc3\xa9")
                await response.write(b"data: " + head + b"\xc3" + end * 2)
                payload = b"\xa9" + rest
                faults = faults - {"utf8_split"}
            if "non_json_event" in faults and number == 1:
                await response.write(b"data: hello" + end * 2)
            if "unknown_field" in faults and number == 1:
                await response.write(b"foo: bar" + end)
            if "named_event" in faults and number == 1:
                await response.write(b"event: chunk" + end)
            await response.write(b"data: " + payload + end * 2)
        if "garbage_after_done" in faults:
            await response.write(b"oops" + eol)
        if "trailing_half" in faults:
            await response.write(b'data: {"id": "chatcmpl-fake", "choi')
        await response.write_eof()
        return response


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeAPI]:
    with FakeAPI() as api:
        yield api


def run_on_fake(fake: FakeAPI, faults: set[str], ids: tuple[str, ...] | list[str]) -> dict[str, CheckResult]:
    fake.faults = set(faults)
    try:
        return run_fresh(Target(base_url=fake.url, api_key=KEY, model=MODEL, timeout_s=30), ids)
    finally:
        fake.faults = set()


def test_the_fake_is_correct_when_unbroken(fake: FakeAPI) -> None:
    assert not not_passed(run_on_fake(fake, set(), IDS))


def test_cr_only_line_endings_are_fine(fake: FakeAPI) -> None:
    streaming = [check_id for check_id in IDS if check_id.startswith(("streaming.", "usage.stream"))]
    assert not not_passed(run_on_fake(fake, {"cr_only"}, streaming))


BROKEN = [
    ("no_auth", "auth.missing_key", "got 200"),
    ("no_auth", "auth.wrong_key", "got 200"),
    ("bad_json_500", "errors.malformed_json", "server error 500"),
    ("any_content_type", "errors.wrong_content_type", "got 200"),
    ("any_model", "errors.unknown_model", "got 200"),
    ("no_size_cap", "errors.oversized_body", "got 200"),
    ("missing_max_tokens_ok", "errors.missing_required", "request without max_tokens"),
    ("unnamed_param", "errors.missing_required", "names param None"),
    ("array_500", "errors.non_object_body", "server error 500"),
    ("error_streamed", "errors.error_before_stream", "answered 200"),
    ("json_stream_ct", "streaming.content_type", "expected text/event-stream"),
    ("trailing_half", "streaming.framing", "ends inside an event"),
    ("garbage_after_done", "streaming.framing", "ends inside an event"),
    ("utf8_split", "streaming.framing", "invalid UTF-8"),
    ("non_json_event", "streaming.framing", "neither JSON"),
    ("unknown_field", "streaming.framing", "SSE parser warnings: unknown field 'foo'"),
    ("named_event", "streaming.framing", "type 'chunk'"),
    ("bad_chunk", "streaming.chunk_schema", "breaks the spec"),
    ("inconsistent_id", "streaming.constant_fields", "has id 'chatcmpl-other'"),
    ("no_role", "streaming.role_first", "role None"),
    ("two_finish", "streaming.finish_reason_once", "choice 0 got 2 finish_reasons"),
    ("missing_finish_1", "streaming.finish_reason_once", "expected [0, 1]"),
    ("no_done", "streaming.done_once_last", "no data: [DONE]"),
    ("two_done", "streaming.done_once_last", "2 data: [DONE] events"),
    ("data_after_done", "streaming.done_once_last", "follow it"),
    ("garbage_after_done", "streaming.done_once_last", "follow data: [DONE]"),
    ("trailing_half", "streaming.done_once_last", "follow data: [DONE]"),
    ("utf8_split", "streaming.utf8_split", "split across events"),
    ("fffd_stream", "streaming.no_replacement_char", "U+FFFD"),
    ("mixed_eol", "streaming.line_endings", "mixes line endings: CRLF, LF"),
    ("no_usage", "usage.nonstream_present", "no usage"),
    ("no_usage", "usage.stream_last_chunk_only", "no chunk of the stream carries usage"),
    ("totals_wrong", "usage.totals_add_up", "!= total_tokens"),
    ("ignores_max_tokens", "usage.max_tokens_bound", "> max_tokens 3"),
    ("usage_middle", "usage.stream_last_chunk_only", "not in the last one"),
    ("usage_every_chunk", "usage.stream_last_chunk_only", "chunks carry usage"),
    ("usage_with_choices", "usage.stream_last_chunk_only", "expected []"),
    ("stream_usage_off_by_one", "usage.matches_stream_tokens", "6 logprob entries"),
    ("json_usage_off_by_one", "usage.matches_logprobs_nonstream", "6 logprob entries"),
]


def assert_caught(result: CheckResult, fragment: str, url: str) -> None:
    assert result.outcome == "failed", f"{result.id}: {result.outcome}: {result.message}"
    assert fragment in result.message, result.message
    assert result.curl and url in result.curl, result.curl
    assert result.response_excerpt and result.response_excerpt.startswith("HTTP "), result.response_excerpt


@pytest.mark.parametrize(("fault", "check_id", "fragment"), BROKEN, ids=[f"{f}-{c}" for f, c, _ in BROKEN])
def test_a_broken_rule_is_caught(fake: FakeAPI, fault: str, check_id: str, fragment: str) -> None:
    result = run_on_fake(fake, {fault}, [check_id])[check_id]
    assert_caught(result, fragment, fake.url)


def test_every_check_can_fail() -> None:
    assert {check_id for _, check_id, _ in BROKEN} == set(IDS)


def test_the_oversized_evidence_stays_small(fake: FakeAPI) -> None:
    result = run_on_fake(fake, {"no_size_cap"}, ["errors.oversized_body"])["errors.oversized_body"]
    assert result.outcome == "failed"
    assert result.curl is not None and len(result.curl) < 4000
    assert "python3 -c" in result.curl and "--data-binary @-" in result.curl
    assert len(json.dumps(result.request)) < 4000


@contextlib.contextmanager
def resetting_server() -> Iterator[str]:
    """A listener that reads a little of each request, then resets the connection (no answer)."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                with contextlib.suppress(OSError):
                    conn.recv(65536)
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    thread = threading.Thread(target=serve, name="resetting-server", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(5)
        listener.close()


def test_a_reset_instead_of_413_is_caught() -> None:
    with resetting_server() as url:
        target = Target(base_url=url, api_key=KEY, model=MODEL, timeout_s=30)
        result = run_fresh(target, ["errors.oversized_body"])["errors.oversized_body"]
    assert_caught(result, "connection was reset", url)
    assert result.response_excerpt.startswith("HTTP 0")
