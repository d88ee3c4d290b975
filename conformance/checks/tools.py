"""Tool calls (OpenAI's tool calling; openai profile only: the documented API has none).

Streamed tool calls are what most often breaks OpenAI-compatible servers for real clients (deltas
without `index` break the OpenAI SDK), so each rule of OpenAI's streamed form is its own check.
An endpoint that refuses a request with tools (a 4xx) or ignores them (a forced call answered in
text) does not offer the feature: every check then reports tools as not supported, never failed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import jsonschema

from conformance.context import Context, StreamResult
from conformance.registry import CheckFailed, NotSupported, Skipped, check
from conformance.target import Exchange

FEATURE = "tools"
PROMPT = "What is the weather in Paris for the next 2 days, and what time is it in UTC? Use the tools."
# Bounded only in ways a JSON grammar enforces (lengths, enums): a server that constrains generation
# to the schema always ends a call, and a check never fails on a model that ran a string to max_tokens.
WEATHER = {"type": "object", "properties": {"city": {"type": "string", "minLength": 1, "maxLength": 32},
                                            "days": {"type": "integer", "enum": [1, 2, 3, 4, 5, 6, 7]}},
           "required": ["city", "days"]}
TIME = {"type": "object", "properties": {"zone": {"type": "string", "enum": ["UTC", "CET"]}}, "required": ["zone"]}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "The forecast for a city.",
                                      "parameters": WEATHER}},
    {"type": "function", "function": {"name": "get_time", "description": "The time in a zone.",
                                      "parameters": TIME}},
]
SCHEMAS = {"get_weather": WEATHER, "get_time": TIME}
FORCED = "get_weather"
MAX_TOKENS = 256  # room for a whole call's arguments from a real model


def named(name: str) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name}}


def _body(ctx: Context, **params: Any) -> dict[str, Any]:
    """A request with the two tools; `params` override the defaults."""
    defaults = {"messages": [{"role": "user", "content": PROMPT}], "tools": TOOLS, "max_tokens": MAX_TOKENS,
                "seed": ctx.target.seed}
    return ctx.body(**{**defaults, **params})


def _calls_of(data: dict[str, Any]) -> list[Any] | None:
    """choices[0].message.tool_calls of a body, None when it has none."""
    choices = data.get("choices") or [{}]
    message = choices[0].get("message") if isinstance(choices[0], dict) else None
    calls = message.get("tool_calls") if isinstance(message, dict) else None
    return calls if isinstance(calls, list) and calls else None


def _offered(exchange: Exchange) -> None:
    """Not supported when the endpoint refuses tools (a 4xx) or ignores a forced call (text, no calls)."""
    if 400 <= exchange.status < 500:
        raise NotSupported(f"relies on tools: a request with tools and a forced call was refused "
                           f"(HTTP {exchange.status})")
    if exchange.status == 200 and exchange.content_type == "application/json":
        try:
            data = exchange.json()
        except ValueError:
            return
        if isinstance(data, dict) and _calls_of(data) is None:
            raise NotSupported("relies on tools: a forced call (tool_choice naming a function) was answered "
                               "without tool_calls, so the endpoint ignores tools")


def forced_call(ctx: Context) -> tuple[Exchange, dict[str, Any]]:
    """The non-stream answer to a call forced by name (once per run), after the feature probe."""
    def probe() -> tuple[Exchange, dict[str, Any]]:
        exchange = ctx.chat(_body(ctx, tool_choice=named(FORCED), stream=False))
        _offered(exchange)
        return exchange, ctx.completion(exchange)
    return ctx.memo("tools.forced", probe)


def _uses_tools(ctx: Context) -> None:
    """The profile gate and the feature probe every check starts with."""
    if ctx.target.profile != "openai":
        raise Skipped("tool calls are checked in the openai profile (--profile openai)")
    try:
        forced_call(ctx)
    except CheckFailed:
        ctx.lacks("tools (a forced call was not answered 200 with a valid body)", "tools.message_shape")


@dataclass
class StreamedCall:
    """One call of a streamed choice 0, as its deltas gave it."""

    index: int
    heads: list[dict[str, Any]] = field(default_factory=list)  # the deltas that carry an id or a name
    arguments: str = ""
    deltas: int = 0


def streamed_calls(result: StreamResult) -> dict[int, StreamedCall]:
    """Choice 0's calls keyed by index. A delta without an integer index is taken as the previous
    call's (what a lenient client does), so only tools.stream_index judges a missing index."""
    calls: dict[int, StreamedCall] = {}
    current = 0
    for item in stream_items(result):
        index = item.get("index")
        if isinstance(index, int) and not isinstance(index, bool):
            current = index
        call = calls.setdefault(current, StreamedCall(current))
        call.deltas += 1
        function = item.get("function") if isinstance(item.get("function"), dict) else {}
        if item.get("id") or function.get("name"):  # "id": null names nothing
            call.heads.append(item)
        if isinstance(function.get("arguments"), str):
            call.arguments += function["arguments"]
    return calls


def stream_items(result: StreamResult) -> list[dict[str, Any]]:
    """Every tool_calls item of choice 0's deltas, in order."""
    items: list[dict[str, Any]] = []
    for chunk in result.chunks:
        for choice in chunk.get("choices") or [] if isinstance(chunk, dict) else []:
            delta = choice.get("delta") if isinstance(choice, dict) and choice.get("index", 0) == 0 else None
            found = delta.get("tool_calls") if isinstance(delta, dict) else None
            items.extend(item for item in found or [] if isinstance(item, dict))
    return items


def forced_stream(ctx: Context) -> StreamResult:
    """The streamed answer to the forced call (once per run); no tool_calls in it is a failure."""
    def send() -> StreamResult:
        result = ctx.ok_stream(_body(ctx, tool_choice=named(FORCED)))
        ctx.expect(stream_items(result), "a streamed forced call carried no delta.tool_calls", result.exchange)
        return result
    return ctx.memo("tools.forced_stream", send)


REQUIRED_REFUSED = "relies on tool_choice 'required' (the endpoint refused it: {status})"


def _required(ctx: Context, stream: bool) -> Exchange | None:
    """The answer to tool_choice required with both tools and parallel calls allowed (once per run
    and mode); None when the endpoint refuses `required` with a 4xx (older servers do)."""
    def send() -> Exchange | None:
        exchange = ctx.chat(_body(ctx, tool_choice="required", parallel_tool_calls=True, stream=stream))
        return None if 400 <= exchange.status < 500 else exchange
    return ctx.memo(f"tools.required.{stream}", send)


def required_json(ctx: Context) -> tuple[Exchange, dict[str, Any]]:
    """The non-streamed answer to tool_choice required; NotSupported when the endpoint refuses it."""
    exchange = _required(ctx, stream=False)
    if exchange is None:
        raise NotSupported(REQUIRED_REFUSED.format(status="4xx"))
    return exchange, ctx.completion(exchange)


def parallel_stream(ctx: Context) -> StreamResult | None:
    """The streamed answer to tool_choice required (None: the endpoint refuses `required`)."""
    exchange = _required(ctx, stream=True)
    return None if exchange is None else ctx.memo("tools.parallel_stream", lambda: ctx.stream_of(exchange))


@check("tools.message_shape", FEATURE, "schema")
def message_shape(ctx: Context) -> None:
    """A call forced by name, not streamed: message.tool_calls holds a call to that function with a
    non-empty id, type function and arguments as a JSON string; content is null or text."""
    if ctx.target.profile != "openai":
        raise Skipped("tool calls are checked in the openai profile (--profile openai)")
    exchange, data = forced_call(ctx)
    message = data["choices"][0]["message"]
    calls = _calls_of(data) or []
    for position, call in enumerate(calls):
        where = f"message.tool_calls[{position}]"
        ctx.expect(isinstance(call, dict), f"{where} is not an object", exchange)
        ctx.expect(isinstance(call.get("id"), str) and call["id"], f"{where} has no id", exchange)
        ctx.expect(call.get("type") == "function", f"{where}.type is {call.get('type')!r}, expected 'function'",
                   exchange)
        function = call.get("function")
        ctx.expect(isinstance(function, dict), f"{where} has no function object", exchange)
        ctx.expect(isinstance(function.get("arguments"), str),
                   f"{where}.function.arguments is {type(function.get('arguments')).__name__}, not a JSON string",
                   exchange)
    ctx.expect(calls[0]["function"].get("name") == FORCED,
               f"tool_choice named {FORCED!r} but the call is to {calls[0]['function'].get('name')!r}", exchange)
    ctx.expect(message.get("content") is None or isinstance(message["content"], str),
               "message.content is neither null nor text", exchange)


@check("tools.stream_index", FEATURE, "streaming")
def stream_index(ctx: Context) -> None:
    """Every streamed delta.tool_calls item carries an integer `index` (the OpenAI SDK needs it to
    join the pieces of a call)."""
    _uses_tools(ctx)
    parallel = parallel_stream(ctx)  # judged too when the endpoint takes tool_choice required
    for result in (forced_stream(ctx), *([parallel] if parallel is not None else [])):
        for position, item in enumerate(stream_items(result)):
            index = item.get("index")
            ctx.expect(isinstance(index, int) and not isinstance(index, bool) and index >= 0,
                       f"tool_calls delta {position} has index {index!r}, expected an integer >= 0: {item!r:.200}",
                       result.exchange)


@check("tools.stream_named_once", FEATURE, "streaming")
def stream_named_once(ctx: Context) -> None:
    """Each streamed call is named once: its first delta carries id, type function and
    function.name (OpenAI adds arguments ''), and no later delta repeats the id or the name."""
    _uses_tools(ctx)
    result = forced_stream(ctx)
    for index, call in sorted(streamed_calls(result).items()):
        ctx.expect(len(call.heads) == 1, f"call {index}: {len(call.heads)} deltas carry an id or a name, "
                   f"expected only its first: {call.heads[:3]!r:.300}", result.exchange)
        head = call.heads[0]
        function = head.get("function") or {}
        ctx.expect(isinstance(head.get("id"), str) and head["id"], f"call {index}: its first delta has no id",
                   result.exchange)
        ctx.expect(head.get("type") == "function", f"call {index}: first delta type {head.get('type')!r}",
                   result.exchange)
        ctx.expect(function.get("name") == FORCED, f"call {index} is named {function.get('name')!r}, "
                   f"expected {FORCED!r}", result.exchange)


@check("tools.stream_arguments_valid", FEATURE, "semantic")
def stream_arguments_valid(ctx: Context) -> None:
    """A streamed call's argument fragments join into JSON that the function's parameters schema
    accepts."""
    _uses_tools(ctx)
    result = forced_stream(ctx)
    reasons = result.finish_reasons().get(0, [])
    if reasons and reasons[-1] == "length":
        raise NotSupported(f"relies on a call that fits in max_tokens {MAX_TOKENS} (finish_reason length)")
    for index, call in sorted(streamed_calls(result).items()):
        try:
            arguments = json.loads(call.arguments)
        except ValueError as exc:
            raise CheckFailed(f"call {index}: the argument fragments join to {call.arguments!r:.200}, "
                              f"which is not JSON ({exc})", result.exchange) from exc
        problems = [error.message for error in jsonschema.Draft202012Validator(WEATHER).iter_errors(arguments)]
        ctx.expect(not problems, f"call {index}: arguments {arguments!r:.200} break {FORCED}'s parameters: "
                   + "; ".join(problems[:3]), result.exchange)


@check("tools.parallel_distinct", FEATURE, "streaming")
def parallel_distinct(ctx: Context) -> None:
    """tool_choice required with two tools and parallel_tool_calls: the calls (in a body and in a
    stream) have distinct ids, and in a stream distinct indices."""
    _uses_tools(ctx)
    exchange, data = required_json(ctx)
    calls = _calls_of(data) or []
    ids = [call.get("id") for call in calls if isinstance(call, dict)]
    ctx.expect(len(set(ids)) == len(ids), f"the calls share ids: {ids}", exchange)
    result = parallel_stream(ctx)
    if result is None:
        raise NotSupported(REQUIRED_REFUSED.format(status="4xx to the streamed request"))
    heads = [call.heads[0] for call in streamed_calls(result).values() if call.heads]  # each call's first
    if len(heads) < 2 and len(calls) < 2:
        if not heads and not calls:
            raise NotSupported("relies on parallel tool calls: tool_choice required made no call at all "
                               "(judged by tools.required_calls)")
        raise NotSupported("relies on parallel tool calls (tool_choice required with two tools made one call)")
    streamed_ids = [head.get("id") for head in heads]
    ctx.expect(len(set(streamed_ids)) == len(streamed_ids), f"the streamed calls share ids: {streamed_ids}",
               result.exchange)
    indices = [head.get("index") for head in heads]
    ctx.expect(len(set(indices)) == len(indices), f"the streamed calls share indices: {indices}", result.exchange)


@check("tools.required_calls", FEATURE, "semantic")
def required_calls(ctx: Context) -> None:
    """tool_choice required is answered with at least one call, in a body and in a stream (an
    endpoint that refuses `required` with a 4xx has it not supported)."""
    _uses_tools(ctx)
    exchange, data = required_json(ctx)
    ctx.expect(_calls_of(data) is not None, "tool_choice required, but the answer makes no tool call "
               f"(content {data['choices'][0].get('message', {}).get('content')!r:.120})", exchange)
    result = parallel_stream(ctx)
    if result is not None:
        ctx.expect(stream_items(result), "tool_choice required, but the stream carries no delta.tool_calls",
                   result.exchange)


NAMED_FINISH = ("tool_calls", "stop")  # OpenAI ends a call forced by name with "stop"


@check("tools.finish_reason", FEATURE, "semantic")
def finish_reason(ctx: Context) -> None:
    """An answer to tool_choice required is calls ending with finish_reason tool_calls, in a body and
    in a stream; a call forced by name ends with tool_calls or stop (OpenAI's own answer is stop)."""
    _uses_tools(ctx)
    exchange, data = forced_call(ctx)
    finish = data["choices"][0].get("finish_reason")
    ctx.expect(finish in NAMED_FINISH, f"a call forced by name finished with {finish!r}, expected one of "
               f"{list(NAMED_FINISH)}", exchange)
    result = forced_stream(ctx)
    reasons = result.finish_reasons().get(0, [])
    ctx.expect(len(reasons) == 1 and reasons[0] in NAMED_FINISH, f"a streamed call forced by name finished with "
               f"{reasons}, expected one of {list(NAMED_FINISH)}", result.exchange)
    required = _required(ctx, stream=False)  # judged too when the endpoint takes tool_choice required
    data = ctx.completion(required) if required is not None else {}
    if _calls_of(data):
        exchange = required
        finish = data["choices"][0].get("finish_reason")
        ctx.expect(finish == "tool_calls", f"an answer of tool calls (tool_choice required) finished with "
                   f"{finish!r}, expected 'tool_calls'", exchange)
    streamed = parallel_stream(ctx)
    if streamed is not None and stream_items(streamed):
        reasons = streamed.finish_reasons().get(0, [])
        ctx.expect(reasons == ["tool_calls"], f"a streamed answer of tool calls (tool_choice required) finished "
                   f"with {reasons}, expected ['tool_calls']", streamed.exchange)


FOLLOW_UP_ID = "call_chatspec_1"


@check("tools.follow_up", FEATURE, "semantic")
def follow_up(ctx: Context) -> None:
    """A next turn holding the assistant's call and the tool's answer (role tool, tool_call_id) is
    accepted and answered."""
    _uses_tools(ctx)
    call = {"id": FOLLOW_UP_ID, "type": "function",
            "function": {"name": FORCED, "arguments": json.dumps({"city": "Paris", "days": 2})}}
    messages = [{"role": "user", "content": PROMPT},
                {"role": "assistant", "content": None, "tool_calls": [call]},
                {"role": "tool", "tool_call_id": FOLLOW_UP_ID, "content": "Sunny, 21 C, both days."}]
    exchange, data = ctx.ok_json(_body(ctx, messages=messages, tool_choice="auto"))
    ctx.expect(data["choices"], "the follow-up turn has no choices", exchange)


@check("tools.choice_none", FEATURE, "semantic")
def choice_none(ctx: Context) -> None:
    """tool_choice none, with tools given: an answer in text, no tool_calls, finish_reason not
    tool_calls (in a body and in a stream)."""
    _uses_tools(ctx)
    exchange, data = ctx.ok_json(_body(ctx, tool_choice="none", max_tokens=16))
    ctx.expect(_calls_of(data) is None, "tool_choice none, but the answer makes tool calls", exchange)
    finish = data["choices"][0].get("finish_reason")
    ctx.expect(finish != "tool_calls", "tool_choice none, but finish_reason is tool_calls", exchange)
    result = ctx.ok_stream(_body(ctx, tool_choice="none", max_tokens=16))
    ctx.expect(not stream_items(result), "tool_choice none, but the stream carries tool_calls", result.exchange)


@check("tools.unknown_choice", FEATURE, "errors")
def unknown_choice(ctx: Context) -> None:
    """A tool_choice naming a function that tools does not declare is refused (4xx) naming tool_choice."""
    _uses_tools(ctx)
    exchange = ctx.chat(_body(ctx, tool_choice=named("no_such_function"), stream=False))
    ctx.expect_error(exchange, [400], param="tool_choice", what="tool_choice names an undeclared function")
