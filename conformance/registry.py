"""Checks and how they are found: each check is a function of a `Context` that raises on failure.

Static checks register with `@check`; checks generated from the spec (one per parameter and
boundary) come from functions registered with `@check_factory`, called with the target.

Every check has a severity in RFC 2119's words: "must" (an absolute requirement: a failure makes
the run fail) or "should" (a recommendation, e.g. exactly 400 rather than another 4xx: reported,
and gating only with `--fail-on should`). Checks that may wedge an endpoint run after all others.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import spec
from reports.model import SEVERITIES

if TYPE_CHECKING:
    from conformance.context import Context
    from conformance.target import Exchange, Target


def _check_modules() -> tuple[str, ...]:
    """Every module of the conformance.checks package: a new module of checks needs no listing."""
    import conformance.checks as package

    return tuple(f"{package.__name__}.{info.name}" for info in pkgutil.iter_modules(package.__path__)
                 if not info.name.startswith("_"))


CHECK_MODULES = _check_modules()
# The features checks are grouped by, in the order they run (the spec's info.x-features).
FEATURES = spec.default().feature_names


class CheckFailed(AssertionError):
    """The endpoint broke a rule; `exchange` is the request/response that shows it, `cause` a short
    name of the deviation shared by every check it fails (reports group failures by it)."""

    def __init__(self, message: str, exchange: Exchange | None = None, cause: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.exchange = exchange
        self.cause = cause


class NotSupported(Exception):
    """The endpoint does not offer the feature this check needs (reported, never passed)."""


class Skipped(Exception):
    """The check does not apply to this target or profile."""


@dataclass(frozen=True)
class Check:
    """One named rule."""

    id: str
    feature: str
    category: str
    run: Callable[[Context], None]
    description: str = ""
    spec_note: str | None = None
    severity: str = "must"
    # The check may leave the endpoint busy or broken (e.g. a 16 MiB body it spends minutes on):
    # it runs after every other check, so it cannot spoil their results.
    may_wedge: bool = False

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ValueError(f"unknown severity {self.severity!r} for check {self.id!r}; expected one of {SEVERITIES}")

    def haystack(self) -> str:
        return f"{self.id} {self.feature} {self.category} {self.severity}"


_STATIC: list[Check] = []
_FACTORIES: list[Callable[[Target], Iterable[Check]]] = []


def check(
    id: str, feature: str, category: str, description: str = "", *, severity: str = "must",
    may_wedge: bool = False,
) -> Callable[[Callable[[Context], None]], Callable[[Context], None]]:
    """Register the decorated function as check `id` (`severity`: "must" or "should")."""
    if feature not in FEATURES:
        raise ValueError(f"unknown feature {feature!r} for check {id!r}")

    def register(fn: Callable[[Context], None]) -> Callable[[Context], None]:
        _STATIC.append(Check(id, feature, category, fn, description or (fn.__doc__ or "").strip(),
                             severity=severity, may_wedge=may_wedge))
        return fn

    return register


def register(item: Check) -> Check:
    """Register a check built from data (e.g. one per parameter the spec describes)."""
    if item.feature not in FEATURES:
        raise ValueError(f"unknown feature {item.feature!r} for check {item.id!r}")
    _STATIC.append(item)
    return item


def check_factory(fn: Callable[[Target], Iterable[Check]]) -> Callable[[Target], Iterable[Check]]:
    """Register a function that generates checks for a target (e.g. from the spec's ranges)."""
    _FACTORIES.append(fn)
    return fn


def collect(target: Target, keyword: str | None = None, modules: Iterable[str] = CHECK_MODULES) -> list[Check]:
    """The checks of `modules` for `target`, in a stable order (registered checks by their feature's
    place in FEATURES, then generated ones, those that may wedge the endpoint last), filtered by a
    `-k` style expression (which also matches the severity)."""
    wanted = tuple(modules)
    for module in wanted:
        importlib.import_module(module)
    checks = sorted((item for item in _STATIC if item.run.__module__ in wanted),
                    key=lambda item: FEATURES.index(item.feature))
    for factory in _FACTORIES:
        if factory.__module__ in wanted:
            checks.extend(factory(target))
    seen: set[str] = set()
    for item in checks:
        if item.id in seen:
            raise ValueError(f"two checks share the id {item.id!r}")
        seen.add(item.id)
    if keyword:
        matcher = keyword_matcher(keyword)
        checks = [item for item in checks if matcher(item.haystack())]
    return sorted(checks, key=lambda item: item.may_wedge)


_TOKEN = re.compile(r"\s*(\(|\)|[^\s()]+)")


def keyword_matcher(expression: str) -> Callable[[str], bool]:
    """Compile a pytest-like `-k` expression: words match as substrings, with and/or/not/()."""
    tokens = _TOKEN.findall(expression)
    if not tokens:
        raise ValueError("empty -k expression")
    position = 0

    def peek() -> str | None:
        return tokens[position] if position < len(tokens) else None

    def take() -> str:
        nonlocal position
        token = peek()
        if token is None:
            raise ValueError(f"-k expression ends too early: {expression!r}")
        position += 1
        return token

    def parse_or() -> Callable[[str], bool]:
        left = parse_and()
        while peek() == "or":
            take()
            right = parse_and()
            left = (lambda a, b: lambda s: a(s) or b(s))(left, right)
        return left

    def parse_and() -> Callable[[str], bool]:
        left = parse_not()
        while peek() == "and":
            take()
            right = parse_not()
            left = (lambda a, b: lambda s: a(s) and b(s))(left, right)
        return left

    def parse_not() -> Callable[[str], bool]:
        if peek() == "not":
            take()
            inner = parse_not()
            return lambda s: not inner(s)
        token = take()
        if token == "(":
            inner = parse_or()
            if take() != ")":
                raise ValueError(f"unbalanced parentheses in -k expression {expression!r}")
            return inner
        if token in (")", "and", "or"):
            raise ValueError(f"unexpected {token!r} in -k expression {expression!r}")
        word = token.lower()
        return lambda s: word in s.lower()

    matcher = parse_or()
    if peek() is not None:
        raise ValueError(f"unexpected {peek()!r} in -k expression {expression!r}")
    return matcher
