"""Deliberately broken servers: a fault-injecting HTTP proxy in front of a correct reference server.

Each `Fault` breaks exactly one rule and names the checks that must catch it. The proxy runs
in-process (aiohttp, its own event loop on a background thread) and, per request, can

* rewrite the request (`on_request`: the parsed JSON body and the headers, before forwarding),
* rewrite a non-streamed JSON response (`on_json`: status and parsed body),
* rewrite a streamed response (`on_stream`: the list of SSE event payloads, raw bytes, read
  whole from upstream and written back one event per write so the framing stays realistic),
* replace the reply altogether (`on_reply`),
* write a stream's bytes itself (`on_wire`: from the event payloads to the raw writes), for the
  framing faults: stray fields, named events, odd line endings, bytes after `[DONE]`,
* hold a request before forwarding it (`stall`: seconds, e.g. an endpoint busy for minutes).

With no fault the proxy is transparent: the reference's bytes pass through unchanged. Only a fault
below HTTP (a connection reset instead of an answer) needs a raw socket instead of this proxy.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import ClientSession, ClientTimeout, web
from multidict import CIMultiDict

import spec

DONE = b"[DONE]"
# Hop-by-hop and length headers the proxy recomputes rather than copies.
_REQUEST_DROP = {"host", "content-length", "transfer-encoding", "connection", "accept-encoding"}
_REPLY_DROP = {"content-length", "transfer-encoding", "connection", "content-encoding", "date", "server"}
_CUT = "@@chatspec-cut@@"  # placeholder replaced by raw bytes after JSON encoding


@dataclass
class Call:
    """One proxied request as a fault sees it; `body` is the parsed JSON (None when not JSON)."""

    method: str
    path: str
    headers: CIMultiDict[str]
    body: Any
    api_key: str | None

    @property
    def streamed(self) -> bool:
        return isinstance(self.body, dict) and self.body.get("stream") is True


@dataclass
class Reply:
    """What the proxy answers; `events` holds the SSE payloads when the reply is a stream."""

    status: int
    headers: CIMultiDict[str]
    content: bytes = b""
    events: list[bytes] | None = None


RequestHook = Callable[[Call], None]
JsonHook = Callable[[Call, int, Any], tuple[int, Any]]
StreamHook = Callable[[Call, list[bytes]], list[bytes]]
ReplyHook = Callable[[Call, Reply], Reply]
WireHook = Callable[[Call, list[bytes]], list[bytes]]


@dataclass(frozen=True)
class Fault:
    """One broken rule: how the proxy breaks it and which checks must then fail."""

    name: str
    catches: tuple[str, ...]
    # For each check in `catches`, a fragment its failure message must hold: the check fails for
    # this fault's reason, not for any other (a proxy that crashes would fail it too).
    reasons: tuple[str, ...] = ()
    # A -k expression of checks that must NOT fail under this fault (besides `catches`): one
    # deviation, one failure. They pass, or (when their work needs what the fault breaks) report
    # "not supported" naming the feature (e.g. an integer error code fails the envelope check only).
    spares: str = ""
    on_request: RequestHook | None = None
    on_json: JsonHook | None = None
    on_stream: StreamHook | None = None
    on_reply: ReplyHook | None = None
    on_wire: WireHook | None = None
    # Close the connection after each streamed reply without saying `Connection: close` (as
    # llama.cpp's llama-server does): a client's next request on it finds it dead.
    close_after_stream: bool = False
    stall: Callable[[Call], float] | None = None
    # The conformance profile the catching checks run under (the tools checks are the openai profile's).
    profile: str = "documented"
    description: str = field(default="", compare=False)


# ---- SSE helpers -------------------------------------------------------------------------------


def split_events(content: bytes) -> list[bytes]:
    """The data payloads of a `data: ...\\n\\n` event stream (as the reference writes it)."""
    events = []
    for block in content.split(b"\n\n"):
        lines = [line for line in block.split(b"\n") if line.startswith(b"data:")]
        if lines:
            events.append(b"\n".join(line[6:] if line.startswith(b"data: ") else line[5:] for line in lines))
    return events


def encode_event(payload: bytes) -> bytes:
    return b"data: " + payload + b"\n\n"


def dump(chunk: dict[str, Any]) -> bytes:
    return json.dumps(chunk, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def decode(events: list[bytes]) -> list[dict[str, Any] | bytes]:
    """Each payload as a dict when it is a JSON object, else as its raw bytes ([DONE])."""
    items: list[dict[str, Any] | bytes] = []
    for payload in events:
        try:
            value = json.loads(payload)
        except ValueError:
            value = None
        items.append(value if isinstance(value, dict) else payload)
    return items


def encode(items: list[dict[str, Any] | bytes]) -> list[bytes]:
    return [dump(item) if isinstance(item, dict) else item for item in items]


def _choices(item: dict[str, Any] | bytes) -> list[dict[str, Any]]:
    return (item.get("choices") or []) if isinstance(item, dict) else []


def each_chunk(edit: Callable[[Call, dict[str, Any]], None]) -> StreamHook:
    """A stream hook applying `edit` to every JSON chunk in place."""

    def hook(call: Call, events: list[bytes]) -> list[bytes]:
        items = decode(events)
        for item in items:
            if isinstance(item, dict):
                edit(call, item)
        return encode(items)

    return hook


def each_choice(edit: Callable[[Call, dict[str, Any]], None]) -> JsonHook:
    """A JSON hook applying `edit` to every choice of a successful non-stream body."""

    def hook(call: Call, status: int, data: Any) -> tuple[int, Any]:
        if status == 200 and isinstance(data, dict):
            for choice in data.get("choices") or []:
                edit(call, choice)
        return status, data

    return hook


# ---- the proxy -----------------------------------------------------------------------------------


@contextlib.contextmanager
def broken_server(upstream: str, fault: Fault | None, api_key: str | None = None) -> Iterator[str]:
    """Run a proxy in front of `upstream` that applies `fault` (None: transparent); yield its URL."""
    loop = asyncio.new_event_loop()
    state: dict[str, Any] = {}
    ready = threading.Event()
    upstream = upstream.rstrip("/")

    async def handle(request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = json.loads(raw)
        except (UnicodeDecodeError, ValueError):
            body = None
        headers = CIMultiDict((k, v) for k, v in request.headers.items() if k.lower() not in _REQUEST_DROP)
        call = Call(request.method, request.path_qs, headers, body, api_key)
        if fault is not None and fault.on_request is not None:
            before = json.dumps(body)
            fault.on_request(call)
            if json.dumps(call.body) != before:
                raw = json.dumps(call.body).encode("utf-8")
        if fault is not None and fault.stall is not None:
            await asyncio.sleep(fault.stall(call))
        async with state["session"].request(call.method, upstream + call.path, data=raw if raw else None,
                                            headers=call.headers, allow_redirects=False) as answer:
            content = await answer.read()
            reply = Reply(answer.status,
                          CIMultiDict((k, v) for k, v in answer.headers.items() if k.lower() not in _REPLY_DROP),
                          content)
        content_type = reply.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if content_type == "text/event-stream":
            reply.events = split_events(content)
        if fault is not None:
            if fault.on_json is not None and content_type == "application/json":
                try:
                    data = json.loads(content)
                except ValueError:
                    pass
                else:
                    reply.status, data = fault.on_json(call, reply.status, data)
                    reply.content = json.dumps(data, ensure_ascii=False).encode("utf-8")
            if fault.on_stream is not None and reply.events is not None:
                reply.events = fault.on_stream(call, reply.events)
            if fault.on_reply is not None:
                reply = fault.on_reply(call, reply)
        if reply.events is None:
            return web.Response(status=reply.status, body=reply.content, headers=reply.headers)
        response = web.StreamResponse(status=reply.status, headers=reply.headers)
        await response.prepare(request)
        if fault is not None and fault.on_wire is not None:
            writes = fault.on_wire(call, reply.events)
        else:
            writes = [encode_event(payload) for payload in reply.events]
        for data in writes:
            await response.write(data)
        await response.write_eof()
        if fault is not None and fault.close_after_stream and request.transport is not None:
            # A moment later, as llama-server does: a client that reuses the connection at once has
            # its next request swallowed by the close. No Connection: close was said.
            await asyncio.sleep(0.05)
            request.transport.close()
        return response

    async def start() -> None:
        state["session"] = ClientSession(timeout=ClientTimeout(total=120), auto_decompress=True)
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", handle)
        state["runner"] = web.AppRunner(app, access_log=None, shutdown_timeout=2)
        await state["runner"].setup()
        site = web.TCPSite(state["runner"], "127.0.0.1", 0)
        await site.start()
        state["port"] = state["runner"].addresses[0][1]

    def main() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(start())
        except BaseException as exc:  # noqa: BLE001 - reported to the caller below
            state["error"] = exc
            ready.set()
            return
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=main, name="broken-server", daemon=True)
    thread.start()
    if not ready.wait(10) or "error" in state:
        raise RuntimeError(f"the proxy did not start: {state.get('error')!r}")
    try:
        yield f"http://127.0.0.1:{state['port']}"
    finally:
        async def stop() -> None:
            await state["runner"].cleanup()
            await state["session"].close()

        asyncio.run_coroutine_threadsafe(stop(), loop).result(15)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


# ---- the faults ----------------------------------------------------------------------------------


def _no_done(call: Call, events: list[bytes]) -> list[bytes]:
    return [payload for payload in events if payload != DONE]


def _two_done(call: Call, events: list[bytes]) -> list[bytes]:
    return [*events, DONE] if DONE in events else events


def _data_after_done(call: Call, events: list[bytes]) -> list[bytes]:
    chunks = [payload for payload in events if payload != DONE]
    return [*events, chunks[-1]] if chunks else events


def _usage_middle_chunk(call: Call, events: list[bytes]) -> list[bytes]:
    items = decode(events)
    chunks = [item for item in items if isinstance(item, dict)]
    if not chunks or chunks[-1].get("usage") is None or chunks[-1].get("choices"):
        return events
    usage = chunks[-1]["usage"]
    items.remove(chunks[-1])  # the final usage-only chunk goes
    chunks[(len(chunks) - 1) // 2]["usage"] = usage
    return encode(items)


def _no_usage_json(call: Call, status: int, data: Any) -> tuple[int, Any]:
    if status == 200 and isinstance(data, dict):
        data.pop("usage", None)
    return status, data


def _no_usage_stream(call: Call, events: list[bytes]) -> list[bytes]:
    items = decode(events)
    kept: list[dict[str, Any] | bytes] = []
    for item in items:
        if isinstance(item, dict):
            item.pop("usage", None)
            if not item.get("choices"):
                continue  # the usage-only chunk is left out altogether
        kept.append(item)
    return encode(kept)


def _no_logprobs_choice(call: Call, choice: dict[str, Any]) -> None:
    choice["logprobs"] = None


def _no_logprobs_chunk(call: Call, chunk: dict[str, Any]) -> None:
    for choice in _choices(chunk):
        choice["logprobs"] = None


def _no_logprobs_unless_top(call: Call, choice: dict[str, Any]) -> None:
    if not (isinstance(call.body, dict) and call.body.get("top_logprobs")):
        choice["logprobs"] = None


def _top_k_unknown(call: Call, reply: Reply) -> Reply:
    if isinstance(call.body, dict) and "top_k" in call.body:
        headers = CIMultiDict({"Content-Type": "application/json"})
        return Reply(422, headers, b'{"detail": "Unexpected fields in the request: {\'top_k\'}"}')
    return reply


def _stops(call: Call) -> list[str]:
    stop = call.body.get("stop") if isinstance(call.body, dict) else None
    if isinstance(stop, str):
        stop = [stop]
    return [s for s in stop or [] if isinstance(s, str) and s]


def _ending_stop(text: str, stops: list[str]) -> str | None:
    return next((s for s in stops if text.endswith(s)), None)


def _stop_dropped_choice(call: Call, choice: dict[str, Any]) -> None:
    message = choice.get("message") or {}
    text = message.get("content")
    stop = _ending_stop(text, _stops(call)) if isinstance(text, str) else None
    if stop:
        message["content"] = text[: -len(stop)]


def _content_deltas(items: list[dict[str, Any] | bytes]) -> dict[int, list[dict[str, Any]]]:
    """The deltas carrying string content, per choice index, in stream order."""
    out: dict[int, list[dict[str, Any]]] = {}
    for item in items:
        for choice in _choices(item):
            delta = choice.get("delta") or {}
            if isinstance(delta.get("content"), str):
                out.setdefault(choice.get("index", 0), []).append(delta)
    return out


def _stop_dropped_stream(call: Call, events: list[bytes]) -> list[bytes]:
    stops = _stops(call)
    if not stops:
        return events
    items = decode(events)
    for deltas in _content_deltas(items).values():
        stop = _ending_stop("".join(delta["content"] for delta in deltas), stops)
        remaining = len(stop) if stop else 0
        for delta in reversed(deltas):
            if not remaining:
                break
            cut = min(remaining, len(delta["content"]))
            delta["content"] = delta["content"][: len(delta["content"]) - cut]
            remaining -= cut
    return encode(items)


def _length_to_stop(call: Call, choice: dict[str, Any]) -> None:
    if choice.get("finish_reason") == "length":
        choice["finish_reason"] = "stop"


def _length_to_stop_chunk(call: Call, chunk: dict[str, Any]) -> None:
    for choice in _choices(chunk):
        _length_to_stop(call, choice)


def _drop_seed(call: Call) -> None:
    if isinstance(call.body, dict):
        call.body.pop("seed", None)


def _force_n1(call: Call) -> None:
    if isinstance(call.body, dict) and "n" in call.body:
        call.body["n"] = 1


def _five_hundred(call: Call, reply: Reply) -> Reply:
    if reply.status == 400:
        reply.status = 500
    return reply


def _clamp_temperature(call: Call) -> None:
    value = call.body.get("temperature") if isinstance(call.body, dict) else None
    if isinstance(value, int | float) and not isinstance(value, bool):
        call.body["temperature"] = min(max(value, 0.01), 1.99)


def _cut_top(logprobs: Any) -> None:
    for entry in (logprobs or {}).get("content") or []:
        if entry.get("top_logprobs"):
            entry["top_logprobs"] = entry["top_logprobs"][:-1]


def _top_short_choice(call: Call, choice: dict[str, Any]) -> None:
    _cut_top(choice.get("logprobs"))


def _top_short_chunk(call: Call, chunk: dict[str, Any]) -> None:
    for choice in _choices(chunk):
        _cut_top(choice.get("logprobs"))


def _json_mode(call: Call) -> bool:
    fmt = call.body.get("response_format") if isinstance(call.body, dict) else None
    return isinstance(fmt, dict) and fmt.get("type") == "json_object"


def _garbage_json_choice(call: Call, choice: dict[str, Any]) -> None:
    message = choice.get("message") or {}
    if _json_mode(call) and isinstance(message.get("content"), str):
        message["content"] += "}"


def _garbage_json_stream(call: Call, events: list[bytes]) -> list[bytes]:
    if not _json_mode(call):
        return events
    items = decode(events)
    for deltas in _content_deltas(items).values():
        deltas[-1]["content"] += "}"
    return encode(items)


def _json_as_text(call: Call, reply: Reply) -> Reply:
    if reply.status == 200 and reply.headers.get("Content-Type", "").startswith("application/json"):
        reply.headers["Content-Type"] = "text/plain; charset=utf-8"
    return reply


def _integer_code(call: Call, status: int, data: Any) -> tuple[int, Any]:
    if status >= 400 and isinstance(data, dict) and isinstance(data.get("error"), dict):
        data["error"]["code"] = status
    return status, data


def _param_by_location(call: Call, status: int, data: Any) -> tuple[int, Any]:
    error = data.get("error") if status >= 400 and isinstance(data, dict) else None
    if isinstance(error, dict) and isinstance(error.get("param"), str):
        error["param"] = "body." + error["param"]  # FastAPI/pydantic's loc ("body", "max_tokens")
    return status, data


def _status_422(call: Call, reply: Reply) -> Reply:
    if reply.status in (400, 404, 413, 415):
        reply.status = 422
    return reply


def wedged_by_big_body(threshold: int = 1 << 20, stall_s: float = 3600.0) -> Fault:
    """A fault (state of its own, so not in FAULTS) that stalls every request, from the first body
    over `threshold` bytes on: the endpoint still takes connections, but answers nothing (as
    `transformers serve` did for minutes after the 16 MiB body)."""
    wedged: list[bool] = [False]

    def stall(call: Call) -> float:
        if not wedged[0] and len(json.dumps(call.body)) > threshold:
            wedged[0] = True
        return stall_s if wedged[0] else 0.0

    return Fault("wedged_by_big_body", ("errors.oversized_body",), reasons=("transport error",), stall=stall,
                 description="a body over 1 MiB wedges the endpoint: every request from then on stalls")


def _add_key(call: Call) -> None:
    if call.api_key:
        call.headers["Authorization"] = f"Bearer {call.api_key}"


def _utf8_split(call: Call, events: list[bytes]) -> list[bytes]:
    """Cut the first non-ASCII character of the content across two events (raw bytes in the JSON
    strings); when the text has none, an "é" is put in front of the first content delta first."""
    items = decode(events)
    found: tuple[int, dict[str, Any]] | None = None
    first: tuple[int, dict[str, Any]] | None = None
    for position, item in enumerate(items):
        for choice in _choices(item):
            content = (choice.get("delta") or {}).get("content")
            if isinstance(content, str) and content:
                first = first or (position, choice)
                if not content.isascii():
                    found = found or (position, choice)
    if found is None:
        if first is None:
            return events
        found = first
        found[1]["delta"]["content"] = "é" + found[1]["delta"]["content"]
    position, choice = found
    item = items[position]
    assert isinstance(item, dict)
    text = choice["delta"]["content"]
    at = next(i for i, char in enumerate(text) if not char.isascii())
    raw = text[at].encode("utf-8")
    head = text[:at].encode("utf-8") + raw[:1]
    tail = raw[1:] + text[at + 1 :].encode("utf-8")
    choice["delta"]["content"] = _CUT
    part_one = dump(item).replace(_CUT.encode(), head)
    rest = copy.deepcopy(choice)
    rest["delta"] = {"content": _CUT}
    rest["logprobs"] = None
    part_two = dump({**item, "choices": [rest]}).replace(_CUT.encode(), tail)
    payloads = encode(items)
    return [*payloads[:position], part_one, part_two, *payloads[position + 1 :]]


def _drop_first_role(call: Call, events: list[bytes]) -> list[bytes]:
    items = decode(events)
    seen: set[Any] = set()
    for item in items:
        for choice in _choices(item):
            if choice.get("index") not in seen:
                seen.add(choice.get("index"))
                (choice.get("delta") or {}).pop("role", None)
    return encode(items)


def _alternate_id(call: Call, events: list[bytes]) -> list[bytes]:
    items = decode(events)
    chunks = [item for item in items if isinstance(item, dict)]
    for chunk in chunks[1::2]:
        chunk["id"] = f"{chunk.get('id')}-other"
    return encode(items)


def _bump_total(usage: Any) -> None:
    if isinstance(usage, dict) and isinstance(usage.get("total_tokens"), int):
        usage["total_tokens"] += 1


def _totals_wrong_json(call: Call, status: int, data: Any) -> tuple[int, Any]:
    if status == 200 and isinstance(data, dict):
        _bump_total(data.get("usage"))
    return status, data


def _totals_wrong_chunk(call: Call, chunk: dict[str, Any]) -> None:
    _bump_total(chunk.get("usage"))


def _error_streamed(call: Call, reply: Reply) -> Reply:
    if not (call.streamed and reply.status == 400):
        return reply
    try:
        envelope = dump(json.loads(reply.content))
    except ValueError:
        envelope = reply.content.replace(b"\n", b" ")
    headers = CIMultiDict({"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"})
    return Reply(200, headers, b"", events=[envelope, DONE])


def _drop_bans(call: Call) -> None:
    bias = call.body.get("logit_bias") if isinstance(call.body, dict) else None
    if isinstance(bias, dict):
        call.body["logit_bias"] = {k: v for k, v in bias.items() if not (isinstance(v, int) and v < 0)}


def _drop_field(name: str) -> RequestHook:
    def drop(call: Call) -> None:
        if isinstance(call.body, dict):
            call.body.pop(name, None)

    return drop


def _bias_500(call: Call, reply: Reply) -> Reply:
    if isinstance(call.body, dict) and "logit_bias" in call.body:
        return Reply(500, CIMultiDict({"Content-Type": "text/plain"}), b"Internal Server Error")
    return reply


def _always_greedy(call: Call) -> None:
    """Any temperature asked is replaced by a near-zero one (transformers serve without do_sample)."""
    if isinstance(call.body, dict) and "temperature" in call.body:
        call.body["temperature"] = 0.01


def cold_first_answer(ignored: str | None) -> Fault:
    """A fault (state of its own, so not in FAULTS) whose first answer to each messages list differs
    from every later one, as llama-cpp-python's does before its prompt cache holds the prompt; with
    `ignored`, that parameter is also dropped from every request."""
    seen: set[str] = set()

    def first_differs(call: Call, status: int, data: Any) -> tuple[int, Any]:
        key = json.dumps(call.body.get("messages") if isinstance(call.body, dict) else None, sort_keys=True)
        if status == 200 and isinstance(data, dict) and key not in seen:
            seen.add(key)
            for choice in data.get("choices") or []:
                choice["message"]["content"] = (choice["message"].get("content") or "") + " (cold)"
        return status, data

    name = f"cold_first_answer_{ignored}_ignored" if ignored else "cold_first_answer"
    return Fault(name, (f"sampling.{ignored}_effect",) if ignored else (),
                 reasons=(f"{ignored} is ignored",) if ignored else (),
                 on_request=_drop_field(ignored) if ignored else None, on_json=first_differs,
                 description="the first answer to each prompt differs from the later ones"
                             + (f"; {ignored} is dropped" if ignored else ""))


def _accept_everything(call: Call, status: int, data: Any) -> tuple[int, Any]:
    return (200, _canned_completion()) if status == 400 else (status, data)


def _json_content_type(call: Call) -> None:
    call.headers["Content-Type"] = "application/json"


def _five_hundred_when(test: Callable[[Any], bool]) -> ReplyHook:
    """A 400 becomes a 500, only for requests whose parsed body passes `test`."""

    def hook(call: Call, reply: Reply) -> Reply:
        if reply.status == 400 and test(call.body):
            reply.status = 500
        return reply

    return hook


def _canned_completion() -> dict[str, Any]:
    return {"id": "chatcmpl-x", "object": "chat.completion", "created": 0, "model": "mock",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}


def _serve_unknown_model(call: Call, status: int, data: Any) -> tuple[int, Any]:
    return (200, _canned_completion()) if status == 404 else (status, data)


def _shrink_big_body(call: Call) -> None:
    """A body over 1 MiB loses its long messages, so the upstream serves it (no size cap)."""
    if isinstance(call.body, dict) and len(json.dumps(call.body)) > (1 << 20):
        call.body["messages"] = [{"role": "user", "content": "Hello"}]


def _default_max_tokens(call: Call) -> None:
    if isinstance(call.body, dict) and "max_tokens" not in call.body:
        call.body["max_tokens"] = 16


def _unname_param(call: Call, status: int, data: Any) -> tuple[int, Any]:
    error = data.get("error") if isinstance(data, dict) else None
    if status == 400 and isinstance(error, dict):
        error["param"] = None
    return status, data


def _stream_as_json_type(call: Call, reply: Reply) -> Reply:
    if reply.events is not None:
        reply.headers["Content-Type"] = "application/json; charset=utf-8"
    return reply


def _bad_created(call: Call, events: list[bytes]) -> list[bytes]:
    items = decode(events)
    chunks = [item for item in items if isinstance(item, dict)]
    if len(chunks) > 1:
        chunks[1]["created"] = "yesterday"
    return encode(items)


def _finish_positions(items: list[dict[str, Any] | bytes], index: int) -> list[int]:
    return [position for position, item in enumerate(items)
            if any(c.get("index") == index and c.get("finish_reason") is not None for c in _choices(item))]


def _finish_twice(call: Call, events: list[bytes]) -> list[bytes]:
    items = decode(events)
    positions = _finish_positions(items, 0)
    if positions:
        item = items[positions[0]]
        assert isinstance(item, dict)
        twin = copy.deepcopy(item)
        twin["choices"] = [{**c, "delta": {}} for c in _choices(twin) if c.get("index") == 0]
        items.insert(positions[0] + 1, twin)
    return encode(items)


def _no_finish_for_choice_1(call: Call, events: list[bytes]) -> list[bytes]:
    items = decode(events)
    for position in _finish_positions(items, 1):
        for choice in _choices(items[position]):
            if choice.get("index") == 1:
                choice["finish_reason"] = None
    return encode(items)


def _raise_small_max_tokens(call: Call) -> None:
    value = call.body.get("max_tokens") if isinstance(call.body, dict) else None
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value < 8:
        call.body["max_tokens"] = 8


def _usage_everywhere(call: Call, events: list[bytes]) -> list[bytes]:
    items = decode(events)
    chunks = [item for item in items if isinstance(item, dict)]
    usage = chunks[-1].get("usage") if chunks else None
    if usage is not None:
        for chunk in chunks:
            chunk["usage"] = usage
    return encode(items)


def _usage_on_last_choice_chunk(call: Call, events: list[bytes]) -> list[bytes]:
    items = decode(events)
    chunks = [item for item in items if isinstance(item, dict)]
    if len(chunks) > 1 and chunks[-1].get("usage") is not None and not chunks[-1].get("choices"):
        items.remove(chunks[-1])
        chunks[-2]["usage"] = chunks[-1]["usage"]
    return encode(items)


def _one_more_token(usage: Any) -> None:
    if isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int):
        usage["completion_tokens"] += 1
        if isinstance(usage.get("total_tokens"), int):
            usage["total_tokens"] += 1


def _off_by_one_json(call: Call, status: int, data: Any) -> tuple[int, Any]:
    if status == 200 and isinstance(data, dict):
        _one_more_token(data.get("usage"))
    return status, data


def _off_by_one_chunk(call: Call, chunk: dict[str, Any]) -> None:
    _one_more_token(chunk.get("usage"))


# -- framing faults: the proxy writes the stream's bytes itself


def _framed(events: list[bytes], end: bytes = b"\n") -> list[bytes]:
    return [b"data: " + payload + end * 2 for payload in events]


def _trailing_half_event(call: Call, events: list[bytes]) -> list[bytes]:
    return [*_framed(events), b'data: {"id": "chatcmpl-x", "choi']


def _garbage_after_done(call: Call, events: list[bytes]) -> list[bytes]:
    return [*_framed(events), b"oops\n"]


def _insert_before_second(line: bytes) -> WireHook:
    def hook(call: Call, events: list[bytes]) -> list[bytes]:
        writes = _framed(events)
        return [*writes[:1], line, *writes[1:]]

    return hook


def _first_event_crlf(call: Call, events: list[bytes]) -> list[bytes]:
    writes = _framed(events)
    return [*_framed(events[:1], b"\r\n"), *writes[1:]] if writes else writes


def _cr_only(call: Call, events: list[bytes]) -> list[bytes]:
    return _framed(events, b"\r")


def _byte_level(logprobs: Any) -> None:
    for entry in (logprobs or {}).get("content") or []:
        for item in (entry, *(entry.get("top_logprobs") or [])):
            item["token"] = item["token"].replace(" ", "\u0120")
            if item.get("bytes") is not None:
                item["bytes"] = list(item["token"].encode("utf-8"))


def _byte_level_choice(call: Call, choice: dict[str, Any]) -> None:
    _byte_level(choice.get("logprobs"))


def _byte_level_chunk(call: Call, chunk: dict[str, Any]) -> None:
    for choice in _choices(chunk):
        _byte_level(choice.get("logprobs"))


def _one_finish(call: Call, events: list[bytes]) -> list[bytes]:
    items = decode(events)
    indices = {choice.get("index") for item in items for choice in _choices(item)}
    for item in items:
        for choice in _choices(item):
            if len(indices) > 1 and choice.get("index") != max(indices):
                choice["finish_reason"] = None
    return encode(items)


def _one_index(call: Call, events: list[bytes]) -> list[bytes]:
    items = decode(events)
    for item in items:
        for choice in _choices(item):
            choice["index"] = 0
    return encode(items)


def _usage_also_first(call: Call, events: list[bytes]) -> list[bytes]:
    items = decode(events)
    chunks = [item for item in items if isinstance(item, dict)]
    if len(chunks) > 1 and chunks[-1].get("usage") is not None:
        chunks[0]["usage"] = chunks[-1]["usage"]
    return encode(items)


def _drop_bad_bias_keys(call: Call) -> None:
    bias = call.body.get("logit_bias") if isinstance(call.body, dict) else None
    if isinstance(bias, dict):
        call.body["logit_bias"] = {k: v for k, v in bias.items() if k.isdigit() and int(k) < 1000}


def _vague_bias_error(call: Call, status: int, data: Any) -> tuple[int, Any]:
    error = data.get("error") if isinstance(data, dict) else None
    if status == 400 and isinstance(error, dict) and str(error.get("param")).startswith("logit_bias"):
        error["message"] = "Invalid logit_bias."
        error["param"] = "logit_bias"
    return status, data


def _drop_schema(call: Call) -> None:
    fmt = call.body.get("response_format") if isinstance(call.body, dict) else None
    if isinstance(fmt, dict):
        fmt.pop("schema", None)


def _replace_non_ascii(call: Call, chunk: dict[str, Any]) -> None:
    for choice in _choices(chunk):
        delta = choice.get("delta") or {}
        if isinstance(delta.get("content"), str):
            delta["content"] = "".join(c if c.isascii() else "\ufffd" for c in delta["content"])


def _usage_null(call: Call, chunk: dict[str, Any]) -> None:
    chunk.setdefault("usage", None)


def _force_n1_in_streams(call: Call) -> None:
    if call.streamed:
        _force_n1(call)


# ---- tool calls (openai profile) -------------------------------------------------------------------


def _tool_items(item: dict[str, Any] | bytes) -> list[dict[str, Any]]:
    """The delta.tool_calls items of a chunk."""
    return [entry for choice in _choices(item) for entry in (choice.get("delta") or {}).get("tool_calls") or []]


def _message_calls(data: Any) -> list[dict[str, Any]]:
    choices = data.get("choices") if isinstance(data, dict) else None
    return [call for choice in choices or [] for call in (choice.get("message") or {}).get("tool_calls") or []]


def _arguments_as_object(call: Call, status: int, data: Any) -> tuple[int, Any]:
    for tool_call in _message_calls(data):
        tool_call["function"]["arguments"] = json.loads(tool_call["function"]["arguments"])
    return status, data


def _fragments_without_index(call: Call, chunk: dict[str, Any]) -> None:
    for item in _tool_items(chunk):
        if "id" not in item:
            item.pop("index", None)


def _named_in_every_delta(call: Call, events: list[bytes]) -> list[bytes]:
    items = decode(events)
    heads: dict[int, dict[str, Any]] = {}
    for item in items:
        for entry in _tool_items(item):
            if "id" in entry:
                heads[entry["index"]] = entry
            else:
                head = heads[entry["index"]]
                entry.update(id=head["id"], type="function")
                entry["function"]["name"] = head["function"]["name"]
    return encode(items)


def _last_fragment_dropped(call: Call, events: list[bytes]) -> list[bytes]:
    items = decode(events)
    last: dict[int, dict[str, Any]] = {}
    for item in items:
        for entry in _tool_items(item):
            if "id" not in entry:
                last[entry["index"]] = entry
    for entry in last.values():
        entry["function"]["arguments"] = ""
    return encode(items)


def _one_id_json(call: Call, status: int, data: Any) -> tuple[int, Any]:
    calls = _message_calls(data)
    for tool_call in calls:
        tool_call["id"] = calls[0]["id"]
    return status, data


def _one_id_stream(call: Call, events: list[bytes]) -> list[bytes]:
    items = decode(events)
    first = None
    for item in items:
        for entry in _tool_items(item):
            if "id" in entry:
                first = first or entry["id"]
                entry["id"] = first
    return encode(items)


def _tool_finish_stop_choice(call: Call, choice: dict[str, Any]) -> None:
    if choice.get("finish_reason") == "tool_calls":
        choice["finish_reason"] = "stop"


def _tool_finish_stop_chunk(call: Call, chunk: dict[str, Any]) -> None:
    for choice in _choices(chunk):
        _tool_finish_stop_choice(call, choice)


def _refuse_tool_messages(call: Call, reply: Reply) -> Reply:
    messages = call.body.get("messages") if isinstance(call.body, dict) else None
    if any(isinstance(m, dict) and m.get("role") == "tool" for m in messages or []):
        envelope = {"error": {"message": "Unknown role 'tool'.", "type": "invalid_request_error", "param": "messages",
                              "code": "invalid_value"}}
        return Reply(400, CIMultiDict({"Content-Type": "application/json"}), dump(envelope))
    return reply


def _none_means_required(call: Call) -> None:
    if isinstance(call.body, dict) and call.body.get("tool_choice") == "none":
        call.body["tool_choice"] = "required"


def _drop_undeclared_choice(call: Call) -> None:
    body = call.body if isinstance(call.body, dict) else {}
    choice = body.get("tool_choice")
    declared = {tool["function"]["name"] for tool in body.get("tools") or []}
    if isinstance(choice, dict) and choice["function"]["name"] not in declared:
        del body["tool_choice"]


def _think_in_content(call: Call, events: list[bytes]) -> list[bytes]:
    items = decode(events)
    for item in items:
        for choice in _choices(item):
            if (choice.get("delta") or {}).get("content"):
                choice["delta"]["content"] = "<think>Let me see.</think>" + choice["delta"]["content"]
                return encode(items)
    return encode(items)


def _refuse_tools(call: Call, reply: Reply) -> Reply:
    if isinstance(call.body, dict) and call.body.get("tools"):
        envelope = {"error": {"message": "tools are not supported.", "type": "invalid_request_error",
                              "param": "tools", "code": "unsupported_parameter"}}
        return Reply(400, CIMultiDict({"Content-Type": "application/json"}), dump(envelope))
    return reply


def _strip_tools(call: Call) -> None:
    if isinstance(call.body, dict):
        for name in ("tools", "tool_choice", "parallel_tool_calls"):
            call.body.pop(name, None)


def _required_as_text(call: Call) -> None:
    if isinstance(call.body, dict) and call.body.get("tool_choice") == "required":
        call.body["tool_choice"] = "none"  # the server then answers in text, as if required meant nothing


TOOLS_SPARED = "tools or reasoning_apart"
TOOL_FAULTS: tuple[Fault, ...] = (
    Fault("tool_arguments_object", ("tools.message_shape",), reasons=("arguments",), on_json=_arguments_as_object,
          spares=TOOLS_SPARED, profile="openai",
          description="a body's tool call carries its arguments as a JSON object, not a string"),
    Fault("tool_fragments_without_index", ("tools.stream_index",), reasons=("has index None",),
          on_stream=each_chunk(_fragments_without_index), spares=TOOLS_SPARED, profile="openai",
          description="a streamed call's argument fragments carry no index (the OpenAI SDK breaks on them)"),
    Fault("tool_named_every_delta", ("tools.stream_named_once",), reasons=("deltas carry an id or a name",),
          on_stream=_named_in_every_delta, spares=TOOLS_SPARED, profile="openai",
          description="every delta of a streamed call repeats its id and name"),
    Fault("tool_arguments_cut", ("tools.stream_arguments_valid",), reasons=("which is not JSON",),
          on_stream=_last_fragment_dropped, spares=TOOLS_SPARED, profile="openai",
          description="a streamed call's last argument fragment is lost"),
    Fault("tool_ids_shared", ("tools.parallel_distinct",), reasons=("share ids",), on_json=_one_id_json,
          on_stream=_one_id_stream, spares=TOOLS_SPARED, profile="openai",
          description="parallel calls all carry the first call's id"),
    Fault("tool_finish_stop", ("tools.finish_reason",), reasons=("expected 'tool_calls'",),
          on_json=each_choice(_tool_finish_stop_choice), on_stream=each_chunk(_tool_finish_stop_chunk),
          spares=TOOLS_SPARED, profile="openai", description="an answer that is a call finishes with 'stop'"),
    Fault("tool_required_as_text", ("tools.required_calls",), reasons=("tool_choice required, but the answer",),
          on_request=_required_as_text, spares=TOOLS_SPARED, profile="openai",
          description="tool_choice required answered in plain text, no call (llama-cpp-python)"),
    Fault("tool_message_refused", ("tools.follow_up",), reasons=("expected 200, got 400",),
          on_reply=_refuse_tool_messages, spares=TOOLS_SPARED, profile="openai",
          description="a turn with a role tool message is refused"),
    Fault("tool_choice_none_ignored", ("tools.choice_none",), reasons=("but the answer makes tool calls",),
          on_request=_none_means_required, spares=TOOLS_SPARED, profile="openai",
          description="tool_choice none is taken as required"),
    Fault("undeclared_tool_choice_accepted", ("tools.unknown_choice",), reasons=("got 200",),
          on_request=_drop_undeclared_choice, spares=TOOLS_SPARED, profile="openai",
          description="a tool_choice naming an undeclared function is dropped and the request served"),
    Fault("think_in_content", ("streaming.reasoning_apart",), reasons=("reasoning sent as answer text",),
          on_stream=_think_in_content, profile="openai",
          description="a stream's content opens with the reasoning under a <think> tag"),
)

# Endpoints without tools: every tools check reports "not supported" naming the feature, never failed.
TOOLS_REFUSED = Fault("tools_refused", (), on_reply=_refuse_tools, profile="openai",
                      description="a request with tools is answered 400 naming tools (llama.cpp's engine here)")
def _refuse_required(call: Call, reply: Reply) -> Reply:
    if isinstance(call.body, dict) and call.body.get("tool_choice") == "required":
        envelope = {"error": {"message": "tool_choice 'required' is not supported.", "type": "invalid_request_error",
                              "param": "tool_choice", "code": "unsupported_parameter"}}
        return Reply(400, CIMultiDict({"Content-Type": "application/json"}), dump(envelope))
    return reply


REQUIRED_REFUSED = Fault("required_refused", (), on_reply=_refuse_required, profile="openai",
                         description="tool_choice 'required' answered 400 (vLLM before 0.8.3), named calls served")
TOOLS_IGNORED = Fault("tools_ignored", (), on_request=_strip_tools, profile="openai",
                      description="tools are dropped from requests (an endpoint that ignores them)")


FAULTS: tuple[Fault, ...] = (
    Fault("no_done", ("streaming.done_once_last",),
          reasons=('the stream has no data: [DONE]',), on_stream=_no_done,
          description="the stream ends without data: [DONE]"),
    Fault("two_done", ("streaming.done_once_last",),
          reasons=('2 data: [DONE] events',), on_stream=_two_done,
          description="data: [DONE] is sent twice"),
    Fault("data_after_done", ("streaming.done_once_last",),
          reasons=('event(s) follow it',), on_stream=_data_after_done,
          description="a chunk follows data: [DONE]"),
    Fault("usage_middle_chunk", ("usage.stream_last_chunk_only",),
          reasons=('not in the last one',), on_stream=_usage_middle_chunk,
          description="usage rides on a middle chunk; no final usage chunk"),
    Fault("no_usage", ("usage.nonstream_present", "usage.stream_last_chunk_only", "schema.fuzz_positive"),
          reasons=("body has no usage", "no chunk of the stream carries usage",
                   'Response violates schema: "usage" is a required property'),
          on_json=_no_usage_json, on_stream=_no_usage_stream, description="usage is never sent"),
    Fault("no_stream_usage", ("usage.stream_last_chunk_only",),
          reasons=("no chunk of the stream carries usage",),
          spares="usage.totals_add_up or usage.max_tokens_bound or usage.matches_stream_tokens",
          on_stream=_no_usage_stream, description="a stream never carries usage, even asked for"),
    Fault("no_logprobs", ("logprobs.shape",), reasons=("the choice has no logprobs.content",),
          spares="usage.matches or logit_bias or sampling.",
          on_json=each_choice(_no_logprobs_choice), on_stream=each_chunk(_no_logprobs_chunk),
          description="logprobs: true is accepted and no logprobs are returned"),
    Fault("no_stream_logprobs", ("logprobs.spell_content_stream",),
          reasons=("the same request not streamed returns them",), on_stream=each_chunk(_no_logprobs_chunk),
          description="logprobs come back only when not streaming"),
    Fault("logprobs_need_top", ("logprobs.shape",), reasons=("logprobs: true without top_logprobs",),
          spares="usage.matches_logprobs_nonstream", on_json=each_choice(_no_logprobs_unless_top),
          description="logprobs: true returns logprobs only when top_logprobs is given too (llama-cpp-python)"),
    Fault("top_k_unknown", ("ranges.top_k.inside",), reasons=("expected 200, got 422",),
          spares="ranges.top_k or sampling.top_k_effect",
          on_reply=_top_k_unknown, description="top_k is an unknown field, refused with 422 (transformers serve)"),
    Fault("logit_bias_500", ("ranges.logit_bias.*.inside",), reasons=("expected 200, got 500",),
          spares="ranges.logit_bias or logit_bias", on_reply=_bias_500,
          description="any request with logit_bias is answered 500 (transformers serve)"),
    Fault("stop_dropped", ("stop.contains_and_ends", "stop.stream"),
          reasons=('must contain and end with the stop sequence', 'must contain and end with the stop sequence'),
          on_json=each_choice(_stop_dropped_choice), on_stream=_stop_dropped_stream,
          description="the matched stop sequence is cut off the end of the text"),
    Fault("wrong_finish_reason", ("max_tokens.length_finish",),
          reasons=("finish_reason was never 'length'",),
          on_json=each_choice(_length_to_stop), on_stream=each_chunk(_length_to_stop_chunk),
          description="finish_reason length is reported as stop"),
    Fault("seed_ignored", ("seed.repeat_nonstream", "seed.repeat_stream_vs_nonstream"),
          reasons=('gave different texts', 'differs from the non-streamed'), on_request=_drop_seed,
          description="seed is ignored"),
    Fault("n_ignored", ("n.choices_indices",),
          reasons=('choice indices [0], expected 0, 1, 2',), on_request=_force_n1,
          spares="streaming.role_first or streaming.finish_reason_once",
          description="n is ignored (always 1)"),
    Fault("integer_code", ("errors.envelope",), reasons=("error/code: 400 is not of type 'string', 'null'",),
          spares="ranges or errors or context", on_json=_integer_code,
          description="every error envelope carries the HTTP status as an integer code"),
    Fault("param_by_location", ("errors.param_bare_name",), reasons=("error.param is 'body.",),
          spares="ranges or errors or context", on_json=_param_by_location,
          description="errors name the parameter by the validator's location (body.max_tokens), as FastAPI does"),
    Fault("status_422", ("errors.status_400", "errors.status_404_model", "errors.status_415", "errors.status_413"),
          reasons=("got 422 for malformed JSON", "expected HTTP 404, got 422", "expected HTTP 415, got 422",
                   "expected HTTP 413, got 422"),
          spares="must", on_reply=_status_422,
          description="every client mistake is answered 422 (as FastAPI servers do), not 400/404/413/415"),
    Fault("five_hundred_on_bad_param",
          ("ranges.temperature.above_max", "ranges.n.below_min", "ranges.max_tokens.wrong_type",
           "errors.missing_required"),
          reasons=("server error 500 on a client mistake",) * 4,
          on_reply=_five_hundred, description="client mistakes answer 500 instead of 400"),
    Fault("out_of_range_accepted", ("ranges.temperature.above_max", "ranges.temperature.exclusive_max_end",
                                    "ranges.temperature.exclusive_min_end"),
          reasons=("expected HTTP 400, got 200",) * 3,
          on_request=_clamp_temperature, description="an out-of-range temperature is clamped and accepted"),
    Fault("top_logprobs_wrong_length", ("logprobs.shape",),
          reasons=('2 top_logprobs, expected exactly 3',),
          on_json=each_choice(_top_short_choice), on_stream=each_chunk(_top_short_chunk),
          description="every top_logprobs list is one entry short"),
    Fault("invalid_json_mode", ("json_mode.parsable", "json_mode.schema_valid"),
          reasons=("the content is not valid JSON", "JSON mode with a schema: the content is not valid JSON"),
          on_json=each_choice(_garbage_json_choice), on_stream=_garbage_json_stream,
          description="JSON mode content gets a stray '}' at the end"),
    Fault("json_as_text", ("logit_bias.force", "seed.repeat_nonstream"),
          reasons=("expected application/json, got 'text/plain'",) * 2, on_reply=_json_as_text,
          description="a JSON answer is labelled text/plain"),
    Fault("no_auth", ("auth.missing_key", "auth.wrong_key"),
          reasons=('expected HTTP 401, got 200',) * 2, on_request=_add_key,
          description="requests without a key or with a wrong one are served (200)"),
    Fault("utf8_split", ("streaming.utf8_split", "streaming.framing"),
          reasons=('a character was split across events', "invalid UTF-8"), on_stream=_utf8_split,
          description="a multi-byte UTF-8 character is split across two events"),
    Fault("role_missing", ("streaming.role_first",),
          reasons=("has role None, expected 'assistant'",), on_stream=_drop_first_role,
          description="the first delta of each choice has no role"),
    Fault("inconsistent_id", ("streaming.constant_fields",),
          reasons=('chunk 1 has id',), on_stream=_alternate_id,
          description="every other chunk has a different id"),
    Fault("totals_wrong", ("usage.totals_add_up",),
          reasons=('!= total_tokens',),
          on_json=_totals_wrong_json, on_stream=each_chunk(_totals_wrong_chunk),
          description="total_tokens is one more than prompt + completion"),
    Fault("bans_dropped", ("logit_bias.ban",), reasons=("it must begin otherwise",),
          on_request=_drop_bans,
          description="negative logit_bias entries are dropped (a ban is ignored)"),
    Fault("always_greedy", ("sampling.temperature_effect",),
          reasons=("the endpoint decodes greedily, temperature is ignored",), on_request=_always_greedy,
          description="every temperature is replaced by 0.01 (greedy decoding whatever is asked)"),
    Fault("context_behavior_ignored", ("context.error_behavior",),
          reasons=('context_length_exceeded_behavior "error": expected HTTP 400, got 200',),
          on_request=_drop_field("context_length_exceeded_behavior"),
          description="context_length_exceeded_behavior 'error' is ignored (the prompt is truncated)"),
    Fault("invalid_accepted", ("schema.fuzz_negative",), reasons=("Schema-violating request accepted",),
          on_json=_accept_everything,
          description="every request the spec rejects is answered 200"),
    Fault("error_streamed", ("errors.error_before_stream",),
          reasons=('was answered 200 (text/event-stream) instead of a 400 error envelope',), on_reply=_error_streamed,
          description="a bad streamed request is answered 200 with an error event"),
    # -- errors: each client mistake answered wrongly in its own way
    Fault("bad_json_500", ("errors.malformed_json",), reasons=("server error 500",),
          on_reply=_five_hundred_when(lambda body: body is None),
          description="a body that is not JSON is answered 500"),
    Fault("array_500", ("errors.non_object_body",), reasons=("server error 500",),
          on_reply=_five_hundred_when(lambda body: isinstance(body, list)),
          description="a JSON array body is answered 500"),
    Fault("any_content_type", ("errors.wrong_content_type",), reasons=("got 200",),
          on_request=_json_content_type, description="a body sent as text/plain is served"),
    Fault("any_model", ("errors.unknown_model",), reasons=("got 200",), on_json=_serve_unknown_model,
          description="an unknown model is served"),
    Fault("no_size_cap", ("errors.oversized_body",), reasons=("got 200",), on_request=_shrink_big_body,
          description="a 16 MiB body is served (no size cap)"),
    Fault("missing_max_tokens_ok", ("errors.missing_required",), reasons=("request without max_tokens",),
          on_request=_default_max_tokens, description="a request without max_tokens is served"),
    Fault("unnamed_param", ("errors.envelope",), reasons=("the envelope's param is None, expected",),
          on_json=_unname_param,
          description="400 envelopes name no parameter"),
    # -- streams: one broken rule each
    Fault("json_stream_type", ("streaming.content_type",), reasons=("expected text/event-stream",),
          on_reply=_stream_as_json_type, description="a stream is labelled application/json"),
    Fault("bad_chunk", ("streaming.chunk_schema",), reasons=("breaks the spec",), on_stream=_bad_created,
          description="one chunk's created is a string"),
    Fault("two_finish", ("streaming.finish_reason_once",), reasons=("choice 0 got 2 finish_reasons",),
          on_stream=_finish_twice, description="choice 0's finish_reason is sent twice"),
    Fault("missing_finish_1", ("streaming.finish_reason_once",), reasons=("expected [0, 1]",),
          on_stream=_no_finish_for_choice_1, description="choice 1 of n=2 never gets a finish_reason"),
    Fault("trailing_half", ("streaming.framing", "streaming.done_once_last"),
          reasons=("ends inside an event", "follow data: [DONE]"), on_wire=_trailing_half_event,
          description="half an event follows data: [DONE] and the stream ends"),
    Fault("garbage_after_done", ("streaming.framing", "streaming.done_once_last"),
          reasons=("ends inside an event", "follow data: [DONE]"), on_wire=_garbage_after_done,
          description="a stray line follows data: [DONE]"),
    Fault("non_json_event", ("streaming.framing",), reasons=("neither JSON",),
          on_wire=_insert_before_second(b"data: hello\n\n"), description="one event's data is not JSON"),
    Fault("unknown_field", ("streaming.framing",), reasons=("SSE parser warnings: unknown field 'foo'",),
          on_wire=_insert_before_second(b"foo: bar\n"), description="a line with an unknown SSE field"),
    Fault("named_event", ("streaming.framing",), reasons=("type 'chunk'",),
          on_wire=_insert_before_second(b"event: chunk\n"), description="one event is named 'chunk'"),
    Fault("mixed_eol", ("streaming.line_endings",), reasons=("mixes line endings: CRLF, LF",),
          on_wire=_first_event_crlf, description="the first event ends in CRLF, the rest in LF"),
    # -- usage
    Fault("ignores_max_tokens", ("usage.max_tokens_bound",), reasons=("> max_tokens 3",),
          on_request=_raise_small_max_tokens, description="a max_tokens under 8 is raised to 8"),
    Fault("usage_every_chunk", ("usage.stream_last_chunk_only",), reasons=("chunks carry usage",),
          on_stream=_usage_everywhere, description="every chunk of a stream carries usage"),
    Fault("usage_with_choices", ("usage.stream_last_chunk_only",), reasons=("expected []",),
          on_stream=_usage_on_last_choice_chunk, description="usage rides on the last chunk with choices"),
    Fault("stream_usage_off_by_one", ("usage.matches_stream_tokens",),
          reasons=("logprob entries, usage says completion_tokens",), on_stream=each_chunk(_off_by_one_chunk),
          description="a stream's usage counts one token more than it sent"),
    Fault("json_usage_off_by_one", ("usage.matches_logprobs_nonstream",),
          reasons=("logprob entries (choices[0].logprobs is set), usage says completion_tokens",),
          on_json=_off_by_one_json, description="a non-stream usage counts one token more than it sent"),
    # Every parameter with an effect check (its x-effect in the spec), accepted and then ignored.
    *(Fault(f"{param.name}_ignored", (f"{param.feature}.{param.name}_effect",), reasons=(f"{param.name} is ignored",),
            on_request=_drop_field(param.name), description=f"{param.name} is accepted and dropped")
      for param in spec.default().parameters if param.effect),
    Fault("logprob_tokens_misspelled", ("logprobs.spell_content", "logprobs.spell_content_stream"),
          reasons=("the logprob tokens spell", "the logprob tokens spell"),
          on_json=each_choice(_byte_level_choice), on_stream=each_chunk(_byte_level_chunk),
          description="logprob tokens show the tokenizer's byte-level form ('Ġ' for a space), not the text"),
    Fault("n_stream_one_finish", ("streaming.finish_reason_once",),
          reasons=("finish_reasons came for choice indices [1], expected [0, 1]",), on_stream=_one_finish,
          description="an n>1 stream gives a finish_reason to its last choice only"),
    Fault("n_stream_one_index", ("streaming.finish_reason_once",),
          reasons=("choice 0 got 2 finish_reasons",), on_stream=_one_index,
          description="an n>1 stream sends every choice under index 0"),
    Fault("usage_early_chunk", ("usage.stream_last_chunk_only",),
          reasons=("2 chunks carry usage",), on_stream=_usage_also_first,
          description="the stream's usage is sent on its first chunk as well as the last"),
    Fault("bad_bias_keys_ignored", ("logit_bias.non_integer_key", "logit_bias.unknown_token"),
          reasons=("expected HTTP 400, got 200",) * 2, on_request=_drop_bad_bias_keys,
          description="logit_bias keys that are no token id of the vocabulary are silently dropped"),
    Fault("bias_key_unnamed", ("logit_bias.non_integer_key", "logit_bias.unknown_token"),
          reasons=("must name the key",) * 2, on_json=_vague_bias_error,
          description="a logit_bias error does not say which key is wrong"),
    Fault("invalid_schema_accepted", ("json_mode.invalid_schema",),
          reasons=("expected HTTP 400, got 200",), on_request=_drop_schema,
          description="response_format's schema is dropped, so an invalid one is never refused"),
    Fault("fffd_stream", ("streaming.no_replacement_char",),
          reasons=("has U+FFFD at character",), on_stream=each_chunk(_replace_non_ascii),
          description="a streamed non-ASCII character is sent as U+FFFD (bytes decoded token by token)"),
    Fault("close_silently", ("connection.close_announced",),
          reasons=("without saying Connection: close",), close_after_stream=True,
          description="the connection is closed right after a streamed answer, without Connection: close"),
    *TOOL_FAULTS,
)

def _fault(name: str) -> Fault:
    (found,) = [fault for fault in FAULTS if fault.name == name]
    return found


# Variants the spec allows: every check passes through them (tests/test_broken_servers.py).
VARIANTS: tuple[Fault, ...] = (
    Fault("usage_null_on_chunks", (), on_stream=each_chunk(_usage_null),
          description="every chunk but the usage chunk carries usage: null (OpenAI's own form)"),
)

# Endpoints lacking a feature other checks rely on: those checks report "not supported" naming it
# (`catches` lists them, `reasons` the fragment naming the feature), never "failed".
# An n>1 stream answered with one choice (n honoured only without streaming): no check's own rule.
N_IGNORED_IN_STREAMS = Fault("n_ignored_in_streams", (), on_request=_force_n1_in_streams,
                             description="n is ignored when streaming")

# Checks that report "not supported" naming the feature (never "failed") under a fault that takes
# away a feature they rely on: (fault, those checks, the fragment naming the feature).
LACKING: tuple[tuple[Fault, tuple[str, ...], str], ...] = (
    (_fault("no_logprobs"), ("usage.matches_stream_tokens", "usage.matches_logprobs_nonstream",
                             "logprobs.spell_content", "logprobs.spell_content_stream"), "relies on logprobs"),
    (_fault("seed_ignored"), ("stop.contains_and_ends", "stop.stream"), "relies on seed"),
    (N_IGNORED_IN_STREAMS, ("streaming.finish_reason_once",), "relies on n in streams"),
    (_fault("no_stream_usage"), ("usage.totals_add_up", "usage.max_tokens_bound"), "relies on usage in the stream"),
    (_fault("always_greedy"), ("sampling.top_p_effect", "sampling.min_p_effect", "sampling.top_k_effect"),
     "relies on sampling at a high temperature"),
)

# A correct stream in unusual framing: every line ends in a lone CR (valid SSE).
CR_ONLY = Fault("cr_only", (), on_wire=_cr_only, description="every line ends in CR alone (valid)")
