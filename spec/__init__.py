"""The machine-readable API spec, loaded once and handed out as JSON Schemas, parameter ranges
and what each request parameter is (its feature, its neutral value, how its effect is probed).

Every other package (reference server, conformance suite, load scenarios, reports) reads
schemas, ranges and parameters from here, so nothing the spec knows is written twice.
`load(path)` reads another copy (a test's edited spec); the module functions read the packaged one.
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


def load_spec() -> dict[str, Any]:
    """The whole OpenAPI document, parsed once (callers must not mutate it)."""
    return default().document


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


def _standalone(document: dict[str, Any], name: str, path: Path) -> dict[str, Any]:
    components = document["components"]["schemas"]
    if name not in components:
        raise KeyError(f"no schema named {name!r} in {path.name}")
    defs = _rewrite_refs(components)
    schema = copy.deepcopy(defs[name])
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$defs"] = defs
    return schema


def schema(name: str) -> dict[str, Any]:
    """A self-contained JSON Schema (draft 2020-12) for the component `name` (a fresh copy)."""
    return default().schema(name)


def request_schema(profile: str = "documented") -> dict[str, Any]:
    """JSON Schema of a chat-completions request body under `profile` (the packaged spec)."""
    return default().request_schema(profile)


def profile_extension(profile: str) -> str | None:
    """The component that extends ChatCompletionRequest under `profile` (the packaged spec)."""
    return default().profile_extension(profile)


def profile_request_defaults(profile: str) -> dict[str, Any]:
    """Defaults of the request properties only `profile`'s extension adds (the packaged spec)."""
    return default().profile_request_defaults(profile)


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

    def near(self, end: str, margin: float) -> int | float:
        """The value just inside one end ("min" or "max"): the end itself when inclusive; else the
        next integer, or the end moved `margin` inward. Effect checks probe a parameter there."""
        inclusive, exclusive = ((self.minimum, self.exclusive_minimum) if end == "min"
                                else (self.maximum, self.exclusive_maximum))
        inward = 1 if end == "min" else -1
        if inclusive is not None:
            value: float = inclusive
        elif exclusive is None:
            raise ValueError(f"{self.path} has no {end} end ({self.describe()})")
        else:
            value = exclusive + inward * (1 if self.kind == "integer" else margin)
        if self.kind == "integer":
            return int(value)
        return round(float(value), 6)

    def at_fraction(self, fraction: float) -> float:
        """The number `fraction` of the way from the low end to the high end (both must exist)."""
        low = self.minimum if self.minimum is not None else self.exclusive_minimum
        high = self.maximum if self.maximum is not None else self.exclusive_maximum
        if low is None or high is None:
            raise ValueError(f"{self.path} is not bounded on both sides ({self.describe()})")
        return round(low + fraction * (high - low), 6)


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


def _ranges_of(properties: dict[str, Any], profile: str) -> dict[str, ParamRange]:
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; expected one of {', '.join(PROFILES)}")
    found: list[ParamRange] = []
    for name, prop in properties.items():
        rng = _range_from(name, prop, profile)
        if rng is not None:
            found.append(rng)
        values = prop.get("additionalProperties")
        if isinstance(values, dict):
            rng = _range_from(f"{name}.*", values, profile)
            if rng is not None:
                found.append(rng)
    return {rng.path: rng for rng in found}


_KINDS = ("integer", "number", "boolean", "string", "object", "array")
PROBES = ("collapse", "greedy", "keep_k", "penalty")  # see the spec's info.description on x-effect


@dataclass(frozen=True)
class Effect:
    """How the effect checks probe a sampling parameter (`x-effect`): at the value just inside
    `end` (ParamRange.near with `margin`), what `probe` says must follow."""

    probe: str
    end: str
    margin: float = 0.0


@dataclass(frozen=True)
class Feature:
    """A feature of the API that checks are grouped by and a target may declare unsupported."""

    name: str
    description: str


@dataclass(frozen=True)
class RequestParameter:
    """What the code needs to know about one request property, read from its `x-` keys.

    `engine`: the property reaches the engine in SamplingParams (it has `x-neutral`); `absent` is
    the value it takes there when the request leaves it out or sends null (its documented default,
    else its neutral value).
    """

    name: str
    kind: str | None
    required: bool
    feature: str | None
    engine: bool
    absent: Any = None
    requires: tuple[tuple[str, Any], ...] = ()
    effect: Effect | None = None

    def engine_value(self, body: dict[str, Any]) -> Any:
        """The value the engine gets for this parameter from a validated request `body`."""
        value = body.get(self.name)
        if value is None:
            value = self.absent
        if value is None:
            return None
        convert = {"integer": int, "number": float, "boolean": bool}.get(self.kind or "")
        return convert(value) if convert else value


def _kind(prop: dict[str, Any]) -> str | None:
    types = prop.get("type")
    types = [types] if isinstance(types, str) else list(types or [])
    return next((kind for kind in _KINDS if kind in types), None)


def _parameter(name: str, prop: dict[str, Any], required: bool, features: set[str], path: Path) -> RequestParameter:
    feature = prop.get("x-feature")
    if feature is not None and feature not in features:
        raise ValueError(f"{path.name}: {name} has x-feature {feature!r}, which info.x-features does not declare")
    engine = "x-neutral" in prop
    if engine and "default" in prop and prop["default"] != prop["x-neutral"]:
        raise ValueError(f"{path.name}: {name} has default {prop['default']!r} but x-neutral {prop['x-neutral']!r}")
    effect = prop.get("x-effect")
    if effect is not None:
        effect = Effect(probe=effect["probe"], end=effect["end"], margin=float(effect.get("margin", 0)))
        if effect.probe not in PROBES or effect.end not in ("min", "max") or feature is None:
            raise ValueError(f"{path.name}: {name} has x-effect {effect}; probes are {PROBES}, ends min or max, "
                             "and it needs an x-feature")
    return RequestParameter(
        name=name, kind=_kind(prop), required=required, feature=feature, engine=engine,
        absent=prop.get("default", prop.get("x-neutral")), requires=tuple(prop.get("x-requires", {}).items()),
        effect=effect,
    )


class ApiSpec:
    """One OpenAPI document (the packaged spec, or a copy a test edits) and what is derived from it."""

    def __init__(self, document: dict[str, Any], path: Path) -> None:
        self.document = document
        self.path = path
        self._ranges: dict[str, dict[str, ParamRange]] = {}
        self._schemas: dict[str, dict[str, Any]] = {}

    @property
    def _request(self) -> dict[str, Any]:
        return self.document["components"]["schemas"]["ChatCompletionRequest"]

    @functools.cached_property
    def features(self) -> tuple[Feature, ...]:
        """Every feature, in the order checks run and reports list them (`info.x-features`)."""
        return tuple(Feature(item["name"], item["description"]) for item in self.document["info"]["x-features"])

    @property
    def feature_names(self) -> tuple[str, ...]:
        return tuple(feature.name for feature in self.features)

    @functools.cached_property
    def parameters(self) -> tuple[RequestParameter, ...]:
        """Every request property, in the spec's order."""
        required = set(self._request.get("required", []))
        names = set(self.feature_names)
        return tuple(_parameter(name, prop, name in required, names, self.path)
                     for name, prop in self._request["properties"].items())

    def parameter(self, name: str) -> RequestParameter:
        return next(param for param in self.parameters if param.name == name)

    def engine_parameters(self) -> tuple[RequestParameter, ...]:
        """The parameters the engine gets in SamplingParams (those with `x-neutral`)."""
        return tuple(param for param in self.parameters if param.engine)

    def parameter_ranges(self, profile: str = "documented") -> dict[str, ParamRange]:
        """Every bounded numeric request parameter, keyed by path, under `profile`."""
        if profile not in self._ranges:
            self._ranges[profile] = _ranges_of(self._request["properties"], profile)
        return dict(self._ranges[profile])

    def schema(self, name: str) -> dict[str, Any]:
        """A self-contained JSON Schema (draft 2020-12) for the component `name` (a fresh copy)."""
        if name not in self._schemas:
            self._schemas[name] = _standalone(self.document, name, self.path)
        return copy.deepcopy(self._schemas[name])

    def request_defaults(self) -> dict[str, Any]:
        """Documented defaults of request parameters that have one."""
        return {name: prop["default"] for name, prop in self._request["properties"].items() if "default" in prop}

    def request_schema(self, profile: str = "documented") -> dict[str, Any]:
        """JSON Schema of a chat-completions request body under `profile`: the documented request, or
        it with the profile's extension (a component whose `x-profile` names it) merged in."""
        base = self.schema("ChatCompletionRequest")
        extension = self.profile_extension(profile)
        if extension is not None:
            base["properties"].update(self.schema(extension)["properties"])
        return base

    def profile_extension(self, profile: str) -> str | None:
        """The component that extends ChatCompletionRequest under `profile` (`x-profile`, `x-extends`), if any."""
        if profile not in PROFILES:
            raise ValueError(f"unknown profile {profile!r}; expected one of {', '.join(PROFILES)}")
        components = self.document["components"]["schemas"]
        found = [name for name, item in components.items()
                 if item.get("x-profile") == profile and item.get("x-extends") == "ChatCompletionRequest"]
        return found[0] if found else None

    def profile_request_defaults(self, profile: str) -> dict[str, Any]:
        """Defaults of the request properties that only `profile`'s extension adds (e.g. parallel_tool_calls)."""
        extension = self.profile_extension(profile)
        if extension is None:
            return {}
        props = self.document["components"]["schemas"][extension]["properties"]
        return {name: prop["default"] for name, prop in props.items() if "default" in prop}


@functools.cache
def load(path: Path = SPEC_PATH) -> ApiSpec:
    """The spec at `path`, parsed once per path (callers must not mutate its document)."""
    with path.open(encoding="utf-8") as fh:
        api = ApiSpec(yaml.safe_load(fh), path)
    api.parameters  # noqa: B018 - a malformed x- key fails here, at load, not in some later check
    return api


def default() -> ApiSpec:
    """The packaged spec, spec/openapi.yaml."""
    return load(SPEC_PATH)


def parameter_ranges(profile: str = "documented") -> dict[str, ParamRange]:
    """Every bounded numeric request parameter of the packaged spec, keyed by path, under `profile`."""
    return default().parameter_ranges(profile)


def max_stop_sequences() -> int:
    """How many stop sequences a request may carry (the array form's maxItems)."""
    stop = load_spec()["components"]["schemas"]["ChatCompletionRequest"]["properties"]["stop"]
    return next(alt["maxItems"] for alt in stop["anyOf"] if alt.get("type") == "array")


def decisions() -> list[dict[str, str]]:
    """The spec's recorded resolutions of the doc's contradictions (`info.x-decisions`)."""
    return list(load_spec()["info"].get("x-decisions", []))


def request_defaults() -> dict[str, Any]:
    """Documented defaults of request parameters that have one."""
    return default().request_defaults()
