"""The engine registry is where every CLI gets its engine names: none can fall behind it."""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path
from types import ModuleType

import pytest

from reference_server.__main__ import build_parser as server_parser
from reference_server.engines.registry import ENGINES, build_engine, check_engine_args, engine_names

ROOT = Path(__file__).resolve().parent.parent


def _benchmark(name: str) -> ModuleType:
    """A script of benchmarks/ (a namespace package from the repository root), imported."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    return importlib.import_module(f"benchmarks.{name}")


def _choices(parser: argparse.ArgumentParser, flag: str) -> list[tuple[str, ...]]:
    """The choices of `flag` in the parser and in each of its subcommands."""
    found = []
    for action in parser._actions:
        if flag in action.option_strings:
            found.append(tuple(action.choices))
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found += _choices(sub, flag)
    return found


def test_the_server_offers_every_registered_engine() -> None:
    assert _choices(server_parser(), "--engine") == [tuple(ENGINES)]


def _launching_clis() -> list[tuple[str, argparse.ArgumentParser, str]]:
    from conformance.cli import build_parser as conformance_parser
    from load.cli import build_parser as load_parser

    return [
        ("conformance", conformance_parser(), "--embedded-server"),
        ("load", load_parser(), "--embedded-server"),
        ("compat_matrix", _benchmark("compat_matrix").build_parser(), "--chatspec-engine"),
        ("reliability", _benchmark("reliability").build_parser(), "--engine"),
    ]


def test_every_cli_that_starts_a_server_offers_every_engine_that_starts_bare() -> None:
    bare = {name for name, spec in ENGINES.items() if not spec.needs_model_dir}
    assert bare and bare == set(engine_names(startable_bare=True))
    for name, parser, flag in _launching_clis():
        found = _choices(parser, flag)
        assert found, f"{name} has no {flag}"
        for choices in found:
            assert set(choices) == bare, f"{name} {flag}: {choices}"


def test_the_mock_is_built_from_its_registered_options() -> None:
    args = server_parser().parse_args(["--engine", "mock", "--ttft-ms", "7", "--mock-fault", "stall"])
    assert check_engine_args(args) is None
    engine = build_engine(args)
    assert (engine.model_name, engine.ttft_s, engine.fault) == ("mock", 0.007, "stall")


@pytest.mark.parametrize(("argv", "problem"), [
    (["--engine", "exllamav2"], "the exllamav2 engine needs --model DIR"),
    (["--engine", "mock", "--mock-fault-at", "0"], "--mock-fault-at must be >= 1"),
    (["--engine", "llamacpp", "--mock-slots", "-1"], "--mock-slots must be >= 0"),  # checked whatever the engine
])
def test_option_errors_argparse_cannot_see(argv: list[str], problem: str) -> None:
    assert (check_engine_args(server_parser().parse_args(argv)) or "").startswith(problem)
