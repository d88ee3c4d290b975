"""The conformance checks as pytest items, for suites that gate with pytest.

    pytest --chatspec-base-url http://127.0.0.1:8000 --chatspec-api-key "$KEY"

Installed with chatspec, pytest loads it by itself (the `pytest11` entry point `chatspec`; from
a checkout: `-p conformance.pytest_plugin`). Its options are the CLI's (conformance/options.py),
each as `--chatspec-NAME`: the base-URL rule, `--chatspec-header`, the key from
$CHATSPEC_API_KEY, the model from {root}/models when not given, the profile, the baseline (an
expected failure is an xfail naming its reason; a fixed one is listed at the end). Without
`--chatspec-base-url` it adds nothing, and it imports the suite only then, so every other
pytest run stays as fast as before.

Each check becomes one test (`chatspec::<check id>`); a failure shows the message and a curl
line that reproduces it; "not supported" features and non-applicable checks are skipped with
that reason, never passed. A should-level check that fails is reported as xfailed ("should-level,
not gating") unless `--chatspec-fail-on should`. When the endpoint stops answering (connections
refused, or a minimal request that succeeded before the first check no longer does, after a
check that did not pass), the session stops with exit status 2.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from conformance import options

if TYPE_CHECKING:
    from conformance.baseline import Baseline
    from conformance.context import Context
    from conformance.registry import Check
    from conformance.target import Target

_CONTEXT: pytest.StashKey[Context] = pytest.StashKey()
_KNOWN_GOOD = pytest.StashKey[bool]()
_BASELINE: pytest.StashKey[Baseline] = pytest.StashKey()
_FIXED: pytest.StashKey[list[str]] = pytest.StashKey()


def pytest_addoption(parser: pytest.Parser) -> None:
    options.add_to_pytest(parser.getgroup("chatspec", "chat-completions conformance (chatspec)"))


def _target(config: pytest.Config) -> Target | None:
    if not config.getoption("chatspec_base_url"):
        return None
    from spec.endpoint import ModelUnknown

    try:
        return options.resolve_target(lambda dest: config.getoption(options.plugin_dest(dest)))
    except (options.OptionError, ModelUnknown) as exc:
        raise pytest.UsageError(str(exc).replace("--", "--chatspec-")) from None


class ChatspecCollector(pytest.Collector):
    """Holds one item per conformance check."""

    def __init__(self, *args: Any, target: Target, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.target = target

    def collect(self) -> list[pytest.Item]:
        from conformance.registry import collect

        return [CheckItem.from_parent(self, name=item.id, check=item) for item in collect(self.target)]


class CheckItem(pytest.Item):
    """One conformance check."""

    def __init__(self, *args: Any, check: Check, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.check = check

    def runtest(self) -> None:
        from conformance.runner import endpoint_gone, run_one

        ctx = self.config.stash[_CONTEXT]
        result = run_one(self.check, ctx)
        if result.outcome in ("not_supported", "skipped"):
            label = "not supported" if result.outcome == "not_supported" else "skipped"
            pytest.skip(f"{label}: {result.message}")
        expected = self.config.stash[_BASELINE].expected if _BASELINE in self.config.stash else {}
        if result.outcome == "passed" and self.check.id in expected:
            self.config.stash.setdefault(_FIXED, []).append(self.check.id)
        if result.outcome != "passed":
            gone = endpoint_gone(ctx.target, known_good=self.config.stash.get(_KNOWN_GOOD, False))
            if gone is not None:  # every later check would fail the same way: stop, as the CLI does
                pytest.exit(f"the endpoint stopped answering at check {self.check.id} ({gone})", returncode=2)
            if self.check.id in expected:
                pytest.xfail(f"expected by the baseline ({expected[self.check.id]}): {result.message}")
            if self.check.severity == "should" and self.config.getoption("chatspec_fail_on") == "must":
                pytest.xfail(f"should-level, not gating: {result.message}")
            detail = [f"[{self.check.severity}] [{result.outcome}] {result.message}"]
            if result.response_excerpt:
                detail.append("response:\n" + result.response_excerpt)
            if result.curl:
                detail.append("reproduce:\n" + result.curl)
            raise ChatspecCheckError("\n".join(detail))

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str:
        if isinstance(excinfo.value, ChatspecCheckError):
            return str(excinfo.value)
        return super().repr_failure(excinfo)

    def reportinfo(self) -> tuple[Any, int | None, str]:
        return (self.path, None,
                f"chatspec::{self.check.id} ({self.check.feature}/{self.check.category}, {self.check.severity})")


class ChatspecCheckError(Exception):
    """A conformance check did not pass."""


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config,
                                  items: list[pytest.Item]) -> None:
    target = _target(config)
    if target is None:
        return
    from conformance.baseline import BaselineError, load
    from conformance.context import Context
    from conformance.runner import probe

    if config.getoption("chatspec_baseline"):
        try:
            config.stash[_BASELINE] = load(config.getoption("chatspec_baseline"))
        except BaselineError as exc:
            raise pytest.UsageError(str(exc)) from None

    config.stash[_CONTEXT] = Context(target)
    config.stash[_KNOWN_GOOD] = probe(target) is None  # a later failure of it means a wedged endpoint
    collector = ChatspecCollector.from_parent(session, name="chatspec", target=target)
    items.extend(collector.collect())


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    fixed = config.stash.get(_FIXED, [])
    if fixed:
        terminalreporter.write_line(f"chatspec: fixed since the baseline (expected to fail, now pass): "
                                    f"{', '.join(fixed)}")


def pytest_unconfigure(config: pytest.Config) -> None:
    ctx = config.stash.get(_CONTEXT, None)
    if ctx is not None:
        ctx.client.close()
