"""Tool calling (the openai profile's `tools`, `tool_choice`, `parallel_tool_calls`): what a request
asks for, as a typed plan, and the call records the generation layer produces.

The request's shape is the spec's (ChatCompletionRequestOpenAI); the rules a schema cannot say are
here: a tool_choice naming a function not in tools, or forcing a call with no tools, is a 400 naming
tool_choice; a function whose `parameters` is no JSON Schema, or two functions of one name, a 400
naming tools.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import jsonschema

from reference_server.errors import ApiError
from reference_server.tool_text import ANY_OBJECT, FunctionTool, history_for_template, offer_tools

if TYPE_CHECKING:
    from reference_server.engines.base import Engine


@dataclass(frozen=True)
class ToolPlan:
    """What a request allows and forces. `choice`: none, auto, required, or named (`named` is then
    the function's name)."""

    tools: tuple[FunctionTool, ...]
    choice: str
    parallel: bool
    named: str | None = None

    def tool(self, name: str) -> FunctionTool:
        return next(tool for tool in self.tools if tool.name == name)

    def forced(self) -> tuple[FunctionTool, ...]:
        """The calls the request leaves no choice about: the named function; with required, one call
        per tool when parallel calls are allowed, else the first; none for auto and none."""
        if self.choice == "named" and self.named is not None:
            return (self.tool(self.named),)
        if self.choice == "required":
            return self.tools if self.parallel else self.tools[:1]
        return ()


def parse_tool_plan(body: dict[str, Any], parallel_default: bool) -> ToolPlan | None:
    """The plan of a schema-valid request, None when it names no tools; ApiError(400) for the
    rules the schema cannot state."""
    tools = tuple(_function(item["function"]) for item in body.get("tools") or [])
    names = [tool.name for tool in tools]
    duplicated = sorted({name for name in names if names.count(name) > 1})
    if duplicated:
        raise ApiError(400, f"tools declares the function {duplicated[0]!r} more than once.", param="tools",
                       code="invalid_value")
    choice = body.get("tool_choice")
    named = choice["function"]["name"] if isinstance(choice, dict) else None
    kind = "named" if named is not None else (choice or ("auto" if tools else "none"))
    if named is not None and named not in names:
        known = ", ".join(map(repr, names)) or "none"
        raise ApiError(400, f"tool_choice names the function {named!r}, which tools does not declare "
                            f"(declared: {known}).", param="tool_choice", code="invalid_value")
    if kind == "required" and not tools:
        raise ApiError(400, "tool_choice 'required' needs at least one function in tools.", param="tool_choice",
                       code="invalid_value")
    if not tools:
        return None
    parallel = body.get("parallel_tool_calls")
    return ToolPlan(tools=tools, choice=kind, parallel=parallel_default if parallel is None else bool(parallel),
                    named=named)


def _function(declared: dict[str, Any]) -> FunctionTool:
    parameters = declared.get("parameters") or ANY_OBJECT
    try:
        jsonschema.validators.validator_for(parameters).check_schema(parameters)
    except jsonschema.SchemaError as exc:
        raise ApiError(400, f"tools: the parameters of {declared['name']!r} are not a valid JSON Schema: "
                            f"{exc.message}", param="tools", code="invalid_value") from exc
    return FunctionTool(name=declared["name"], parameters=parameters, description=declared.get("description") or "")


def unserved(engine_name: str) -> ApiError:
    """The answer of an engine that cannot make tool calls to a request with tools: a client's
    request this server does not serve (4xx, so a conformance run reports tools as not supported)."""
    return ApiError(400, f"This engine ({engine_name}) does not serve tools: send the request without them.",
                    param="tools", code="unsupported_parameter")


@dataclass(frozen=True)
class PlannedCalls:
    """Calls a "planned" engine decided on: made one after another, each one's arguments generated
    in JSON mode against its function's parameters."""

    functions: tuple[FunctionTool, ...]


@dataclass(frozen=True)
class WrittenCall:
    """A call the model of a "written" engine writes as `{"name": ..., "parameters": ...}` to one of
    `tools`. `forced` (required, named): the text is constrained to a call; else (auto) the model
    chooses, by how its answer opens, between text and a call."""

    tools: tuple[FunctionTool, ...]
    forced: bool


def calls_for(engine: Engine, plan: ToolPlan | None) -> PlannedCalls | WrittenCall | None:
    """How an answer to a request with `plan` makes its calls (None: it answers in text); a 400
    naming tools when the request has tools and the engine cannot make calls."""
    if plan is None:
        return None
    if engine.tool_calls == "none":
        raise unserved(type(engine).__name__)
    if plan.choice == "none":
        return None
    if engine.tool_calls == "written":
        return WrittenCall(plan.forced() if plan.choice == "named" else plan.tools, forced=plan.choice != "auto")
    planned = engine.plan_calls(plan)
    return PlannedCalls(planned) if planned else None


def prompt_messages(engine: Engine, messages: list[dict[str, Any]], plan: ToolPlan | None) -> list[dict[str, Any]]:
    """The chat the engine renders. For a "written" engine (its chat template knows nothing of
    tools): earlier calls and tool results as plain turns, and the request's tools offered in the
    system message, whatever tool_choice says (none forbids a call, it does not hide the tools)."""
    if engine.tool_calls != "written":
        return messages
    plain = history_for_template(messages)
    return offer_tools(plain, plan.tools) if plan is not None else plain


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


@dataclass(frozen=True)
class ToolCallPiece:
    """A piece of call `index` of one choice: its first piece names it (`id`, `name`, arguments ''),
    the later ones carry argument fragments only."""

    index: int
    arguments: str
    id: str | None = None
    name: str | None = None

    def to_delta(self) -> dict[str, Any]:
        """The piece as a stream delta's tool_calls item (OpenAI's form)."""
        if self.id is None:
            return {"index": self.index, "function": {"arguments": self.arguments}}
        return {"index": self.index, "id": self.id, "type": "function",
                "function": {"name": self.name, "arguments": self.arguments}}


@dataclass(frozen=True)
class ToolCall:
    """A whole call, as a non-streamed message carries it."""

    id: str
    name: str
    arguments: str

    def to_api(self) -> dict[str, Any]:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


def assemble(pieces: list[ToolCallPiece]) -> list[ToolCall]:
    """The calls the pieces of one choice make, in index order."""
    heads = {piece.index: piece for piece in pieces if piece.id is not None}
    arguments: dict[int, str] = {}
    for piece in pieces:
        arguments[piece.index] = arguments.get(piece.index, "") + piece.arguments
    return [ToolCall(heads[i].id or "", heads[i].name or "", arguments[i]) for i in sorted(heads)]
