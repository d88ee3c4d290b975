"""The machine-readable API spec, loaded once and handed out as JSON Schemas and parameter ranges.

Every other package (reference server, conformance suite, load scenarios, reports) reads
schemas and ranges from here, so no range is ever written twice.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

SPEC_PATH = Path(__file__).with_name("openapi.yaml")
CHAT_PATH = "/v3/openai/chat/completions"
MODELS_PATH = "/v3/openai/models"
PROFILES = ("documented", "openai")

_REF_PREFIX = "#/components/schemas/"


@functools.lru_cache(maxsize=1)
def load_spec() -> dict[str, Any]:
    """The whole OpenAPI document, parsed once (callers must not mutate it)."""
    with SPEC_PATH.open(encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def _rewrite_refs(node: Any) -> Any:
    """Point component refs at `$defs` so a schema stands alone outside the OpenAPI document."""
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str) and value.startswith(_REF_PREFIX):
                out[key] = "#/$defs/" + value[len(_REF_PREFIX) :]
            else:
                out[key] = _rewrite_refs(value)
        return out
    if isinstance(node, list):
        return [_rewrite_refs(item) for item in node]
    return node


@functools.cache
def _schema_cached(name: str) -> dict[str, Any]:
    components = load_spec()["components"]["schemas"]
    if name not in components:
        raise KeyError(f"no schema named {name!r} in {SPEC_PATH.name}")
    defs = _rewrite_refs(components)
    schema = copy.deepcopy(defs[name])
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$defs"] = defs
    return schema


def schema(name: str) -> dict[str, Any]:
    """A self-contained JSON Schema (draft 2020-12) for the component `name` (a fresh copy)."""
    return copy.deepcopy(_schema_cached(name))


def request_schema(profile: str = "documented") -> dict[str, Any]:
    """JSON Schema of a chat-completions request body under `profile`: the documented request, or
    it with the profile's extension (a component whose `x-profile` names it) merged in."""
    base = schema("ChatCompletionRequest")
    extension = profile_extension(profile)
    if extension is not None:
        base["properties"].update(schema(extension)["properties"])
    return base


def profile_extension(profile: str) -> str | None:
    """The component that extends ChatCompletionRequest under `profile` (`x-profile`, `x-extends`), if any."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; expected one of {', '.join(PROFILES)}")
    components = load_spec()["components"]["schemas"]
    found = [name for name, item in components.items()
             if item.get("x-profile") == profile and item.get("x-extends") == "ChatCompletionRequest"]
    return found[0] if found else None


def profile_request_defaults(profile: str) -> dict[str, Any]:
    """Defaults of the request properties that only `profile`'s extension adds (e.g. parallel_tool_calls)."""
    extension = profile_extension(profile)
    if extension is None:
        return {}
    props = load_spec()["components"]["schemas"][extension]["properties"]
    return {name: prop["default"] for name, prop in props.items() if "default" in prop}


def response_schema() -> dict[str, Any]:
    """JSON Schema of a non-streamed `chat.completion` body."""
    return schema("ChatCompletion")


def chunk_schema() -> dict[str, Any]:
    """JSON Schema of one streamed `chat.completion.chunk` (the decoded `data` of an SSE event)."""
    return schema("ChatCompletionChunk")


def error_schema() -> dict[str, Any]:
    """JSON Schema of the error envelope `{"error": {message, type, param, code}}`."""
    return schema("ErrorResponse")


@dataclass(frozen=True)
class ParamRange:
    """One bounded request parameter, as the spec documents it under one profile.

    `path` is the parameter's name, or `logit_bias.*` for the values of the logit_bias map.
    """

    path: str
    kind: str  # "integer" or "number"
    nullable: bool
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: float | None = None
    exclusive_maximum: float | None = None
    default: Any = None
    doc_says: str | None = None
    decision: str | None = None

    def contains(self, value: float) -> bool:
        """Whether `value` lies inside this range."""
        if self.minimum is not None and value < self.minimum:
            return False
        if self.maximum is not None and value > self.maximum:
            return False
        if self.exclusive_minimum is not None and value <= self.exclusive_minimum:
            return False
        if self.exclusive_maximum is not None and value >= self.exclusive_maximum:
            return False
        return True

    def describe(self) -> str:
        """The range in the doc's notation, e.g. `0 < x <= 1`."""
        low = ""
        if self.minimum is not None:
            low = f"{_fmt(self.minimum)} <= "
        elif self.exclusive_minimum is not None:
            low = f"{_fmt(self.exclusive_minimum)} < "
        high = ""
        if self.maximum is not None:
            high = f" <= {_fmt(self.maximum)}"
        elif self.exclusive_maximum is not None:
            high = f" < {_fmt(self.exclusive_maximum)}"
        return f"{low}x{high}"


def _fmt(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


_BOUND_KEYS = {
    "minimum": "minimum",
    "maximum": "maximum",
    "exclusiveMinimum": "exclusive_minimum",
    "exclusiveMaximum": "exclusive_maximum",
}


def _range_from(path: str, prop: dict[str, Any], profile: str) -> ParamRange | None:
    types = prop.get("type")
    types = [types] if isinstance(types, str) else list(types or [])
    kind = "integer" if "integer" in types else "number" if "number" in types else None
    if kind is None:
        return None
    source = prop
    if profile != "documented":
        source = prop.get("x-profiles", {}).get(profile)
        if source is None:
            source = prop
    bounds = {attr: source[key] for key, attr in _BOUND_KEYS.items() if key in source}
    if not bounds:
        return None
    return ParamRange(
        path=path,
        kind=kind,
        nullable="null" in types,
        default=prop.get("default"),
        doc_says=prop.get("x-doc-says"),
        decision=prop.get("x-decision"),
        **bounds,
    )


@functools.cache
def _ranges_cached(profile: str) -> tuple[ParamRange, ...]:
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; expected one of {', '.join(PROFILES)}")
    props = load_spec()["components"]["schemas"]["ChatCompletionRequest"]["properties"]
    found: list[ParamRange] = []
    for name, prop in props.items():
        rng = _range_from(name, prop, profile)
        if rng is not None:
            found.append(rng)
        values = prop.get("additionalProperties")
        if isinstance(values, dict):
            rng = _range_from(f"{name}.*", values, profile)
            if rng is not None:
                found.append(rng)
    return tuple(found)


def parameter_ranges(profile: str = "documented") -> dict[str, ParamRange]:
    """Every bounded numeric request parameter, keyed by path, under `profile`."""
    return {rng.path: rng for rng in _ranges_cached(profile)}


def max_stop_sequences() -> int:
    """How many stop sequences a request may carry (the array form's maxItems)."""
    stop = load_spec()["components"]["schemas"]["ChatCompletionRequest"]["properties"]["stop"]
    return next(alt["maxItems"] for alt in stop["anyOf"] if alt.get("type") == "array")


def decisions() -> list[dict[str, str]]:
    """The spec's recorded resolutions of the doc's contradictions (`info.x-decisions`)."""
    return list(load_spec()["info"].get("x-decisions", []))


def request_defaults() -> dict[str, Any]:
    """Documented defaults of request parameters that have one."""
    props = load_spec()["components"]["schemas"]["ChatCompletionRequest"]["properties"]
    return {name: prop["default"] for name, prop in props.items() if "default" in prop}
