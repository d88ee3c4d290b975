"""`python -m conformance`: gate an endpoint against the spec; the exit code is the verdict.

0: no must-level check failed (should-level failures are reported, and fail the run only with
`--fail-on should` / `--strict`); 1: a check of a failing severity failed; 2: could not run
(one-line reason), or the endpoint stopped answering mid-run (the reports say at which check and
how the server ended).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from conformance import baseline, options
from conformance.registry import collect
from conformance.runner import Unreachable, preflight, run_checks, summary_line
from conformance.target import Target
from reference_server.engines.registry import DEFAULT_ENGINE, engine_names
from spec import endpoint

API_KEY_ENV = options.API_KEY_ENV


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m conformance",
        description=(
            "Check a chat-completions endpoint against spec/openapi.yaml: schema-generated "
            "requests, parameter ranges, strict SSE framing, usage, and model-agnostic semantics "
            "(seed, stop, n, logprobs, logit_bias, JSON mode, context handling). Every check has a "
            "severity, as RFC 2119 words it: 'must' (an absolute requirement, e.g. an invalid value is "
            "rejected with a 4xx, never accepted or answered 5xx) or 'should' (a recommendation, e.g. "
            "exactly 400 rather than 422); every report shows it. Checks that may wedge the endpoint "
            "(a 16 MiB body) run last. Exit status: 0 no must-level check failed, 1 a check of a failing "
            "severity failed (must; should too with --fail-on should), 2 could not run, or the endpoint "
            "stopped answering mid-run: exited, refused connections, or a minimal request that succeeded "
            "before the run times out or fails after a check (the run stops there; the reports name the "
            "check and list those not run)."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    where = parser.add_argument_group("target")
    how = parser.add_argument_group("run")
    options.add_to_argparse({"target": where, "run": how})
    where.add_argument("--embedded-server", nargs="?", const=DEFAULT_ENGINE, choices=engine_names(startable_bare=True),
                       default=None, help="start the reference server on loopback (llamacpp: the "
                       "embedded CPU model, needs chatspec[cpu]; mock: no model) and test it; needs no --base-url")
    how.add_argument("--report-dir", type=Path, default=None,
                     help="write junit.xml, conformance.json and conformance.html here")
    how.add_argument("-k", dest="keyword", default=None,
                     help="only checks whose id/feature/category/severity match this expression "
                     "(substrings with and/or/not, like pytest -k)")
    how.add_argument("--strict", dest="fail_on", action="store_const", const="should",
                     help="the same as --fail-on should")
    how.add_argument("--update-baseline", action="store_true",
                     help="write this run's failures to the --baseline file as YAML (reasons already there "
                     "are kept; a new one's is its message: edit it to say why); not after an aborted run")
    how.add_argument("--list", action="store_true",
                     help="list the checks that would run (id, feature, category, severity), in order, then exit")
    how.add_argument("--quiet", action="store_true", help="no per-check progress lines")
    return parser


@contextlib.contextmanager
def _target_from(
    args: argparse.Namespace, parser: argparse.ArgumentParser
) -> Iterator[tuple[Target, Callable[[], str | None] | None]]:
    """The target, and for an embedded server a way to ask whether (and how) it has exited."""
    get = functools.partial(getattr, args)
    try:
        if not args.embedded_server:
            if not args.base_url:
                parser.error("--base-url is required (or use --embedded-server)")
            yield options.resolve_target(get), None
            return
        common = options.settings(get)
    except options.OptionError as exc:
        parser.error(str(exc))
    if args.base_url:
        parser.error("--embedded-server and --base-url exclude each other")
    from reference_server.engines.extras import missing_engine_extra
    from reference_server.launcher import running_server

    missing = missing_engine_extra(args.embedded_server)
    if missing:
        raise Unreachable(missing)
    print(f"starting the embedded reference server ({args.embedded_server}) ...", file=sys.stderr, flush=True)
    extra = ("--ttft-ms", "0", "--itl-ms", "0") if args.embedded_server == "mock" else ()
    with running_server(*extra, engine=args.embedded_server) as server:
        print(f"reference server up at {server.base_url}, model {server.model!r}", file=sys.stderr, flush=True)
        yield (Target(base_url=server.base_url, api_key=server.api_key, model=server.model, **common),
               server.exit_status)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.update_baseline and not args.baseline:
        parser.error("--update-baseline needs --baseline FILE (the file to write)")
    if args.update_baseline and Path(args.baseline).suffix.lower() == ".json":
        parser.error(f"--update-baseline writes YAML; name a .yaml file, not {args.baseline}")
    expected = None
    if args.baseline and not (args.update_baseline and not Path(args.baseline).exists()):
        try:
            expected = baseline.load(args.baseline)
        except baseline.BaselineError as exc:
            parser.error(str(exc))
    try:
        with _target_from(args, parser) as (target, server_exit):
            try:
                checks = collect(target, args.keyword)
            except ValueError as exc:
                parser.error(str(exc))
            if args.list:
                for item in checks:
                    print(f"{item.id}\t{item.feature}\t{item.category}\t{item.severity}")
                return 0
            if not checks:
                print("error: no check matches -k " + repr(args.keyword), file=sys.stderr)
                return 2
            preflight(target)
            print(f"running {len(checks)} checks against {target.chat_url} (model {target.model!r}, "
                  f"profile {target.profile})", file=sys.stderr, flush=True)
            report = run_checks(target, checks, progress=None if args.quiet else sys.stderr,
                                server_exit=server_exit, fail_on=args.fail_on)
    except (Unreachable, endpoint.ModelUnknown) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (RuntimeError, TimeoutError, OSError) as exc:
        print(f"error: could not run: {exc}", file=sys.stderr)
        return 2
    if expected is not None:
        baseline.apply(report, expected)
    if args.update_baseline and not report.aborted:
        try:
            print(f"baseline: wrote {baseline.write(args.baseline, report, expected)}", file=sys.stderr)
        except (baseline.BaselineError, OSError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        baseline.apply(report, baseline.load(args.baseline))
    if args.report_dir is not None:
        from reports import write_all

        written = write_all(report, args.report_dir)
        for path in written.values():
            print(f"report: {path}", file=sys.stderr)
    print(summary_line(report))
    if report.aborted:
        print(f"error: {report.aborted}", file=sys.stderr)
        return 2
    return 1 if report.failed() else 0
