"""The conformance options shared by `chatspec check` / `python -m conformance` and the pytest
plugin: one definition, so the two cannot drift.

The CLI takes each option as `--NAME`, the plugin as `--chatspec-NAME`; both turn the parsed
values into a Target through `resolve_target`, which applies the base-URL rule, the --header
values, the key from $CHATSPEC_API_KEY and the model from {root}/models.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from conformance.registry import FEATURES
from reports.model import SEVERITIES
from spec import endpoint

if TYPE_CHECKING:  # imported when used: pytest loads this module in every run (the plugin's options)
    from conformance.target import Target

API_KEY_ENV = "CHATSPEC_API_KEY"
PLUGIN_PREFIX = "chatspec-"


@dataclass(frozen=True)
class Option:
    """One option: its name without dashes or prefix, and argparse's keyword arguments."""

    name: str
    group: str  # "target" or "run"
    kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def dest(self) -> str:
        return self.name.replace("-", "_")


OPTIONS: tuple[Option, ...] = (
    Option("base-url", "target", dict(
        help="the API root, e.g. http://127.0.0.1:8000/v1 or https://api.example.com/v3/openai; requests go to "
        f"{{root}}/chat/completions and {{root}}/models. Rule: {endpoint.RULE}")),
    Option("api-key", "target", dict(
        default=None, help=f"bearer key (default: ${API_KEY_ENV}); checks of auth need one")),
    Option("header", "target", dict(
        action="append", default=[], metavar="'NAME: VALUE'",
        help="a header sent with every request, e.g. 'api-key: KEY' for a gateway that authenticates so; "
        "repeatable; reports show its value as $HEADER_VALUE")),
    Option("model", "target", dict(
        help="model name to put in requests; when not given, the one model that {root}/models lists (an error "
        "when it lists none or several)")),
    Option("profile", "run", dict(
        choices=("documented", "openai"), default="documented",
        help="which bounds to hold the endpoint to: the doc's or OpenAI's inclusive ones")),
    Option("max-examples", "run", dict(
        type=int, default=25, help="schema-generated examples per fuzzing mode (positive, negative)")),
    Option("seed", "run", dict(
        type=int, default=1234, help="seed for generated requests and for the seeded runs semantic checks use")),
    Option("skip-feature", "run", dict(
        action="append", default=[], choices=FEATURES, metavar="NAME",
        help="declare a feature unsupported (reported as 'not supported', never passed); repeatable; one of: "
        + ", ".join(FEATURES))),
    Option("fail-on", "run", dict(
        choices=SEVERITIES, default="must",
        help="the least severity whose failures fail the run (exit 1): must, or should to hold the endpoint "
        "to the recommendations too")),
    Option("timeout", "run", dict(type=float, default=120.0, help="seconds per request")),
    Option("baseline", "run", dict(
        default=None, metavar="FILE",
        help="the failures to expect: a previous conformance.json, or YAML 'expected_failures: [{id, reason}]'; "
        "the run fails only on a failure not listed (new), and lists listed ones that now pass (fixed)")),
)


class OptionError(ValueError):
    """An option's value is unusable: the one-line reason (a usage error in the CLI and in pytest)."""


def add_to_argparse(groups: dict[str, Any]) -> None:
    """Add every option as `--NAME` to the argparse groups named by `Option.group`."""
    for option in OPTIONS:
        groups[option.group].add_argument(f"--{option.name}", dest=option.dest, **option.kwargs)


def add_to_pytest(group: Any) -> None:
    """Add every option as `--chatspec-NAME` to a pytest option group."""
    for option in OPTIONS:
        group.addoption(f"--{PLUGIN_PREFIX}{option.name}", dest=plugin_dest(option.dest), **option.kwargs)


def plugin_dest(dest: str) -> str:
    """The pytest `dest` of an option (config.getoption name)."""
    return "chatspec_" + dest


Getter = Callable[[str], Any]  # option dest -> its parsed value


def settings(get: Getter) -> dict[str, Any]:
    """Target fields other than where it is (URL, key, model), from the parsed options."""
    try:
        headers = endpoint.parse_headers(get("header"))
    except ValueError as exc:
        raise OptionError(str(exc)) from None
    if get("max_examples") < 1:
        raise OptionError("--max-examples must be at least 1")
    return dict(profile=get("profile"), timeout_s=get("timeout"), skip_features=frozenset(get("skip_feature")),
                max_examples=get("max_examples"), seed=get("seed"), headers=tuple(headers.items()))


def resolve_target(get: Getter) -> Target:
    """The Target the options name: the base-URL rule, the key from $CHATSPEC_API_KEY when not
    given, the one model {root}/models lists when none is (endpoint.ModelUnknown otherwise)."""
    from conformance.target import Target

    common = settings(get)
    base_url = get("base_url")
    if not base_url:
        raise OptionError("--base-url is required")
    try:
        where = endpoint.resolve(base_url)
    except ValueError as exc:
        raise OptionError(str(exc)) from None
    key = get("api_key") if get("api_key") is not None else os.environ.get(API_KEY_ENV)
    model = get("model") or endpoint.served_model(where, endpoint.auth_headers(key, dict(common["headers"])))
    return Target(base_url=base_url.strip().rstrip("/"), api_key=key, model=model, **common)
