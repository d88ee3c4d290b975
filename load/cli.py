"""`python -m load`: run Locust load against a chat-completions endpoint and write reports.

Exit codes: 0 the run finished and met every --slo; 1 an SLO was missed; 2 the run could not
be made (bad arguments, unreachable endpoint, bad dataset), with a one-line reason, or the endpoint
stopped answering mid-run (the step ends early, later steps do not run, the reports are written).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import json
import math
import os
import random
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

from load.capacity import CapacitySearch
from load.config import API_PATH, LoadConfig, MasterOptions, StepSpec
from load.document import Calibration, LoadReport
from load.document_parts import WorkloadSummary
from load.fidelity import describe as describe_fidelity
from load.lengths import SPEC_HELP
from load.prompts import message_counter, post_json
from load.reasoning import summary_line as reasoning_summary_line
from load.scrape import DEFAULT_SERIES, Scrapes, fetch, parse_series
from load.slo import parse_slo
from load.workloads import from_wire as workload_from_wire
from load.workloads.build import DEFAULT_OUTPUT_TOKENS, add_workload_arguments, build_workload, workload_kind
from load.workloads.trace import TraceWorkload
from reference_server.engines.registry import engine_names
from spec import endpoint

API_KEY_ENV = "CHATSPEC_API_KEY"
DEFAULT_DURATION_S = 30.0
MOCK_EOS_BAN = {"logit_bias": {"0": -100}}  # the mock engine's end-of-sequence token is id 0


class UsageError(Exception):
    """Bad arguments or an endpoint that cannot be used: exit 2 with this message."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m load",
        description="Load-test a chat-completions endpoint with Locust users and report LLM latencies "
                    "(TTFT, ITL, TPOT, E2E), throughput and goodput with exact percentiles. Each step runs "
                    "for --duration seconds, or until its --max-requests requests (or a trace's rows) have "
                    "all been sent and answered; the first --warmup seconds are not measured. Each step "
                    "reports what was asked beside what was scheduled, sent and done. Exit 0: done and every "
                    "--slo met; 1: an SLO missed; 2: could not run, the endpoint stopped answering mid-run "
                    "(its server exited, or every request for ~2 s had its connection refused), or a step "
                    "did not send what was asked (e.g. requests came due while every user was busy); "
                    "reports are still written.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        epilog="examples:\n"
               "  python -m load --base-url http://127.0.0.1:8000 --model m --users 8 --duration 60\n"
               "  python -m load --base-url URL --model m --rate 5 --arrival poisson --sweep 1,2,4,8\n"
               "  python -m load --calibrate --users 32      # measure our own error against the mock\n"
               "  python -m load compare RUN_A RUN_B --fail-if-worse 5   # see python -m load compare --help\n"
               "  python -m load ... --master --expect-workers 4   # and on 4 machines: python -m load worker "
               "--master-host HOST\n",
    )
    target = parser.add_argument_group("target")
    target.add_argument("--base-url", help="the API root, e.g. http://127.0.0.1:8000/v1 (requests go to "
                        f"{{root}}/chat/completions). Rule: {endpoint.RULE}")
    target.add_argument("--api-key", default=None, help=f"bearer key (default: ${API_KEY_ENV})")
    target.add_argument("--header", action="append", default=[], metavar="'NAME: VALUE'",
                        help="a header sent with every request, e.g. 'api-key: KEY'; repeatable")
    target.add_argument("--model", help="model name sent in every request; when not given, the one model that "
                        "{root}/models lists")
    target.add_argument("--path", default=None, help=f"the chat path on the base URL's host, overriding the "
                        f"rule above (e.g. {API_PATH})")
    target.add_argument("--embedded-server", choices=engine_names(startable_bare=True), default=None,
                        help="start the reference server on loopback for this run (base URL and key not needed)")
    target.add_argument("--calibrate", action="store_true",
                        help="self-check: start the mock engine with --mock-ttft-ms/--mock-itl-ms and report "
                             "how far our measured TTFT and ITL are from that truth")
    target.add_argument("--mock-ttft-ms", type=float, default=100.0, help="mock engine time to first token")
    target.add_argument("--mock-itl-ms", type=float, default=10.0, help="mock engine gap between tokens")

    shape = parser.add_argument_group("load shape")
    mode = shape.add_mutually_exclusive_group()
    mode.add_argument("--stream", dest="stream", action="store_true", default=True, help="streamed requests")
    mode.add_argument("--no-stream", dest="stream", action="store_false", help="non-streamed requests")
    shape.add_argument("--users", type=int, default=None,
                       help="closed loop: concurrent users (default 8); open loop: the pool of users that may "
                            "be in flight at once (default 256)")
    shape.add_argument("--rate", type=float, default=None, help="open loop: requests per second")
    shape.add_argument("--arrival", choices=("poisson", "constant", "gamma"), default="poisson",
                       help="open-loop arrival process")
    shape.add_argument("--gamma-shape", type=float, default=0.5, help="gamma arrivals: shape (<1 burstier)")
    shape.add_argument("--sweep", default=None,
                       help="comma-separated users (closed loop) or rates (with --rate) to run as steps, in order")
    shape.add_argument("--duration", type=float, default=None,
                       help="seconds per step: no request is scheduled after it (default 30; with --max-requests: "
                            "none, the step lasts until its count has been sent and answered; a trace replay: its "
                            "span plus --timeout, so the whole trace is sent)")
    shape.add_argument("--warmup", type=float, default=None,
                       help="seconds at the start of each step not measured (default: 10%% of --duration, <= 10; "
                            "with --max-requests and no --duration, or a trace replay: 0)")
    shape.add_argument("--max-requests", type=int, default=None, help="stop a step after this many requests")
    shape.add_argument("--workers", type=int, default=1,
                       help="Locust worker processes on this machine (master/worker mode, one per core) instead of "
                            "one process")

    spread = parser.add_argument_group("load from several machines (docs/distributed.md)")
    spread.add_argument("--master", action="store_true",
                        help="run as the master of workers started elsewhere (python -m load worker --master-host "
                             "THIS_HOST): wait for --expect-workers of them, then run the steps over them")
    spread.add_argument("--expect-workers", type=int, default=None, metavar="N",
                        help="with --master: how many workers the run waits for and splits the load between")
    spread.add_argument("--master-bind-host", default="*", help="with --master: the address workers connect to")
    spread.add_argument("--master-bind-port", type=int, default=5557, help="with --master: the port workers connect to")
    spread.add_argument("--expect-workers-max-wait", type=float, default=0.0, metavar="S",
                        help="with --master: give up (exit 2) when the workers have not all connected after S "
                             "seconds; 0: wait as long as it takes")

    body = parser.add_argument_group("requests")
    body.add_argument("--prompt-tokens", default=None, metavar="SPEC",
                      help="synthetic prompt length in tokens, a fixed number (calibrated from usage.prompt_tokens) "
                           f"or a distribution: {SPEC_HELP}; shared-prefix: the unique suffix (default 32); "
                           "multi-turn: each user message")
    body.add_argument("--prompt-words", type=int, default=32,
                      help="synthetic prompt length in words, when --prompt-tokens is not given (at least 7: "
                           "fewer would repeat prompts within a run, and a server's prompt cache would answer them)")
    body.add_argument("--output-tokens", default=None, metavar="SPEC",
                      help=f"max_tokens of each request: a number or a distribution (default {DEFAULT_OUTPUT_TOKENS}; "
                           "sharegpt: the dataset answer's length)")
    body.add_argument("--dataset", default=None,
                      help="JSONL file: one request per line, a list of messages or {messages, max_tokens}; "
                           "with --workload sharegpt, a ShareGPT JSON/JSONL file")
    body.add_argument("--extra-body", default=None,
                      help='JSON object merged into every request, e.g. \'{"temperature": 0}\'')
    body.add_argument("--timeout", type=float, default=120.0, help="seconds before a request is abandoned")
    body.add_argument("--ignore-retry-after", action="store_true",
                      help="closed loop: send the next request right after a 429 (default: wait the answer's "
                           "Retry-After, at most 5 s, as a real client does)")
    body.add_argument("--seed", type=int, default=None,
                      help="seed of prompts and arrival schedules (default: a fresh one each run, printed and "
                           "kept in the report: a server's prompt cache never answers a run with the prompts of "
                           "the last; give the same seed to send the same prompts again)")

    add_workload_arguments(parser)

    out = parser.add_argument_group("results")
    out.add_argument("--slo", default=None,
                     help="objectives in ms, e.g. ttft_p99=500,itl_p99=50,tpot_p50=20,e2e_p90=4000; "
                          "exit 1 if any step misses one")
    out.add_argument("--report-dir", default="out/load", help="where load.json, load.csv, load.html go")
    out.add_argument("--quiet", action="store_true", help="no progress lines")

    search = parser.add_argument_group("capacity search (--find-capacity)")
    search.add_argument("--find-capacity", action="store_true",
                        help="find the highest concurrency (closed loop, from --users, default 1) or arrival rate "
                             "(open loop, from --rate) at which every --slo holds: ramp x2, then bisect; a clearly "
                             "saturated step is stopped early; each step lasts --duration")
    search.add_argument("--capacity-max-level", type=float, default=None,
                        help="highest users or rate the search may try")
    search.add_argument("--capacity-max-steps", type=int, default=12, help="most steps the search may run")
    search.add_argument("--capacity-max-time", type=float, default=900.0,
                        help="seconds the search may take (a step that would end later is not started)")
    search.add_argument("--capacity-tolerance", type=float, default=0.1,
                        help="open loop: stop bisecting when the passing and failing rates are this close "
                             "(fraction of the rate); closed loop stops at one user apart")

    server = parser.add_argument_group("server side")
    server.add_argument("--scrape-metrics", default=None, metavar="URL",
                        help="sample this Prometheus endpoint during the run (a path like /metrics: on the "
                             "target's host, with its key and --header values) and plot the chosen series on the "
                             "steps' time axis")
    server.add_argument("--scrape-series", default=",".join(DEFAULT_SERIES),
                        help="series to keep, with or without their prefix (num_requests_waiting matches "
                             "vllm:num_requests_waiting); the sum over label sets; *_total counters as rates")
    server.add_argument("--scrape-interval", type=float, default=1.0, help="seconds between scrapes")
    return parser


def parse_levels(text: str, as_rate: bool) -> list[float]:
    """'1,8,32' -> [1, 8, 32]; every value must be > 0 (and whole for users)."""
    levels = []
    for item in text.split(","):
        item = item.strip()
        try:
            value = float(item)
        except ValueError:
            raise UsageError(f"--sweep: {item!r} is not a number") from None
        if value <= 0 or (not as_rate and value != int(value)):
            raise UsageError(f"--sweep: {item!r} must be {'> 0' if as_rate else 'a whole number of users >= 1'}")
        levels.append(value)
    if not levels:
        raise UsageError("--sweep is empty")
    return levels


def build_steps(args: argparse.Namespace) -> list[StepSpec]:
    """The steps the arguments describe (one, or one per --sweep value)."""
    # A step bounded by its count lasts until the count is sent and answered, and is measured whole,
    # unless --duration/--warmup say otherwise (a capacity search needs steps of a known length).
    by_count = args.max_requests is not None and args.duration is None and not args.find_capacity
    duration = math.inf if by_count else DEFAULT_DURATION_S if args.duration is None else args.duration
    if duration <= 0:
        raise UsageError("--duration must be > 0")
    warmup = (0.0 if by_count else min(10.0, 0.1 * duration)) if args.warmup is None else args.warmup
    if not 0 <= warmup < duration:
        raise UsageError("--warmup must be >= 0 and shorter than --duration")
    if args.max_requests is not None and args.max_requests < 1:
        raise UsageError("--max-requests must be >= 1")
    if args.rate is not None and args.rate <= 0:
        raise UsageError("--rate must be > 0")
    if args.users is not None and args.users < 1:
        raise UsageError("--users must be >= 1")
    open_loop = args.rate is not None
    levels = parse_levels(args.sweep, open_loop) if args.sweep else [args.rate if open_loop else (args.users or 8)]
    steps = []
    for index, level in enumerate(levels):
        users = (args.users or 256) if open_loop else int(level)
        steps.append(StepSpec(index=index, users=users, duration_s=duration, warmup_s=warmup,
                              rate=level if open_loop else None, arrival=args.arrival,
                              max_requests=args.max_requests))
    return steps


@contextlib.contextmanager
def target_server(
    args: argparse.Namespace,
) -> Iterator[tuple[str, str | None, str, Callable[[], str | None] | None]]:
    """(base URL, key, model, server exit status): an embedded reference server, or the given endpoint.

    The last item, for an embedded server only, says how it has ended (None while it runs).
    """
    engine = "mock" if args.calibrate else args.embedded_server
    if engine is None:
        if not args.base_url:
            raise UsageError("--base-url is required (or use --embedded-server / --calibrate)")
        key = args.api_key or os.environ.get(API_KEY_ENV)
        model = args.model
        if not model:
            try:
                model = endpoint.served_model(resolve_endpoint(args.base_url), endpoint.auth_headers(
                    key, parse_headers(args)))
            except endpoint.ModelUnknown as exc:
                raise UsageError(str(exc)) from None
        yield args.base_url.strip().rstrip("/"), key, model, None
        return
    from reference_server.launcher import running_server

    extra = ["--ttft-ms", str(args.mock_ttft_ms), "--itl-ms", str(args.mock_itl_ms)] if engine == "mock" else []
    extra += ["--max-queue", "100000", "--log-level", "WARNING"]
    with running_server(*extra, engine=engine) as server:
        yield server.base_url, server.api_key, server.model, server.exit_status


def resolve_endpoint(base_url: str) -> endpoint.Endpoint:
    try:
        return endpoint.resolve(base_url)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def parse_headers(args: argparse.Namespace) -> dict[str, str]:
    try:
        return endpoint.parse_headers(args.header)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def make_config(args: argparse.Namespace, base_url: str, api_key: str | None, model: str) -> LoadConfig:
    """Settings for every request; the workload is planned against the endpoint (lengths in its tokens)."""
    try:
        extra_body = json.loads(args.extra_body) if args.extra_body else {}
    except ValueError as exc:
        raise UsageError(f"--extra-body is not JSON: {exc}") from None
    if not isinstance(extra_body, dict):
        raise UsageError("--extra-body must be a JSON object")
    if args.calibrate:
        extra_body = {**MOCK_EOS_BAN, **extra_body}  # every answer exactly --output-tokens long
    where = resolve_endpoint(base_url)
    path = args.path or where.chat_path
    headers = parse_headers(args)
    url = where.origin + path
    try:
        # One small request first: fail now, with the server's own words, if the endpoint is unusable.
        post_json(url, api_key, {"model": model, "max_tokens": 1, **extra_body,
                                 "messages": [{"role": "user", "content": "ping"}]}, headers=headers)
        workload = build_workload(args, message_counter(url, api_key, model, extra_body, headers))
    except (RuntimeError, ValueError) as exc:  # WorkloadError is a ValueError
        raise UsageError(str(exc)) from None
    return LoadConfig(base_url=where.origin, model=model, api_key=api_key, stream=args.stream, path=path,
                      workload=workload.to_wire(), extra_body=extra_body, timeout_s=args.timeout, seed=args.seed,
                      gamma_shape=args.gamma_shape, honor_retry_after=not args.ignore_retry_after, headers=headers)


def trace_steps(args: argparse.Namespace, steps: list[StepSpec], workload: TraceWorkload) -> list[StepSpec]:
    """A trace replay is one open-loop step at the trace's own times: at most its rows, labelled by speed.

    Unless --duration is given, the step may last the trace's span plus --timeout (it ends as soon as
    every row has been sent and answered), and nothing is warm-up unless --warmup says so: a replay
    is meant to be sent, and measured, whole.
    """
    rows = len(workload.rows)
    count = rows if args.max_requests is None else min(rows, args.max_requests)
    step = steps[0]
    span = (workload.rows[count - 1]["timestamp"] - workload.rows[0]["timestamp"]) / 1000 / workload.speed
    if args.duration is None:
        step = dataclasses.replace(step, duration_s=span + args.timeout,
                                   warmup_s=0.0 if args.warmup is None else args.warmup)
        if step.warmup_s >= step.duration_s:
            raise UsageError("--warmup must be shorter than the trace's span plus --timeout")
    elif span >= step.duration_s:
        print(f"note: the trace spans {span:.1f} s at speed {workload.speed:g}; --duration "
              f"{step.duration_s:g} s ends the replay before its end (rows due after it are not sent)",
              file=sys.stderr)
    return [dataclasses.replace(step, users=args.users or 256, max_requests=count, name=f"trace x{workload.speed:g}",
                                schedule_rate=(count - 1) / span if count > 1 and span > 0 else None)]


def print_summary(doc: LoadReport) -> None:
    """One line per step on stdout: what a person wants to see when the run ends."""
    print(f"{'step':<16}{'req/s':>8}{'tok/s':>10}{'TTFT p50':>10}{'TTFT p99':>10}{'ITL p50':>9}"
          f"{'ITL p99':>9}{'E2E p50':>10}{'errors':>8}  SLO")
    for step in doc.steps:
        m = step.metrics

        def ms(value: float | None) -> str:
            return "-" if value is None else f"{value:.1f}"

        slo = "-" if not step.slo else ("met" if step.slo_met else "MISSED")
        print(f"{step.label:<16}{m.requests_per_s:>8.2f}{m.output_tokens_per_s:>10.1f}"
              f"{ms(m.ttft_ms.p50):>10}{ms(m.ttft_ms.p99):>10}{ms(m.itl_ms.p50):>9}{ms(m.itl_ms.p99):>9}"
              f"{ms(m.e2e_ms.p50):>10}{m.requests_failed:>8}  {slo}")
        for line in describe_fidelity(step.fidelity) if step.fidelity else []:
            print(f"{'':<16}{line}")
        if (first_content := reasoning_summary_line(m)) is not None:  # a reasoning model's TTFC, tokens
            print(f"{'':<16}{first_content}")
        if m.requests_with_tool_calls:
            print(f"{'':<16}tool calls: {m.requests_with_tool_calls} of {m.requests_ok} answers called a tool "
                  f"({m.tool_calls_total} calls); TTFT counts a call's first delta")
        if m.errors_by_kind:
            kinds = ", ".join(f"{kind} {count}" for kind, count in m.errors_by_kind.items())
            print(f"{'':<16}errors by kind: {kinds}")
        for line in workload_lines(step.workload):
            print(f"{'':<16}{line}")
    capacity = doc.capacity
    if capacity:
        answer = capacity["capacity_label"] or "none (no level met every objective)"
        print(f"capacity: {answer}; search ended: {capacity['stop_reason']}")
        for row in capacity["margin"]:
            if row["headroom"] is not None:
                print(f"  {row['objective']}: {row['measured']:g} of {row['limit']:g} "
                      f"({row['headroom']:+.0%} headroom)")
    if doc.calibration:
        for row in doc.calibration.errors:
            if row.error_ms is not None:
                print(f"calibration {row.step}: {row.metric} {row.percentile} measured "
                      f"{row.measured_ms:.3f} ms, truth {row.truth_ms:g} ms, error {row.error_ms:+.3f} ms")


def workload_lines(workload: WorkloadSummary | None) -> list[str]:
    """The workload's own findings for the summary: lengths served short, prefix sharing, turns."""
    if workload is None:
        return []
    lines = []
    out = workload.output_tokens
    if out.served.count:
        lines.append(f"output tokens: asked mean {out.requested.mean:.1f}, served mean "
                     f"{out.served.mean:.1f}; {workload.output_short} requests served fewer than asked")
    sharing = workload.prefix_sharing
    if sharing and sharing.ratio is not None:
        lines.append(f"prefix-sharing ratio {sharing.ratio:.3f} ({sharing.reusable_prompt_tokens} of "
                     f"{sharing.prompt_tokens} prompt tokens repeat a prefix sent before)")
    for turn in workload.per_turn or []:
        ttft, prompt = turn.ttft_ms.p50, turn.prompt_tokens_mean
        lines.append(f"turn {turn.turn}: {turn.requests} requests, TTFT p50 "
                     f"{'-' if ttft is None else f'{ttft:.1f}'} ms, prompt tokens mean "
                     f"{'-' if prompt is None else f'{prompt:.0f}'}")
    return lines


def capacity_search(args: argparse.Namespace, steps: list[StepSpec], slo: dict[str, float]) -> CapacitySearch:
    """The --find-capacity search the arguments describe (its first step is build_steps' one)."""
    if not slo:
        raise UsageError("--find-capacity needs --slo (the objectives a level must meet)")
    if args.sweep:
        raise UsageError("--find-capacity chooses its own levels: leave out --sweep")
    if args.capacity_max_steps < 1 or args.capacity_max_time <= 0 or not 0 < args.capacity_tolerance < 1:
        raise UsageError("--capacity-max-steps must be >= 1, --capacity-max-time > 0, --capacity-tolerance in (0, 1)")
    first = steps[0]
    start = first.rate if first.rate is not None else float(args.users or 1)
    if args.capacity_max_level is not None and args.capacity_max_level < start:
        raise UsageError("--capacity-max-level is below the starting level")
    return CapacitySearch(template=first, slo=slo, open_loop=first.rate is not None, start=start,
                          max_level=args.capacity_max_level, max_steps=args.capacity_max_steps,
                          max_time_s=args.capacity_max_time, tolerance=args.capacity_tolerance)


def scrape_target(args: argparse.Namespace, base_url: str, api_key: str | None) -> Scrapes | None:
    """What --scrape-metrics asks for, checked with one scrape now (exit 2 if it cannot be had). A
    path is on the target's host (not under its API root: /metrics sits at the root) and gets the
    target's key and --header values; a full URL elsewhere gets none of them."""
    if not args.scrape_metrics:
        return None
    if args.scrape_interval <= 0:
        raise UsageError("--scrape-interval must be > 0")
    on_target = args.scrape_metrics.startswith("/")
    url = resolve_endpoint(base_url).origin + args.scrape_metrics if on_target else args.scrape_metrics
    headers = endpoint.auth_headers(api_key, parse_headers(args)) if on_target else {}
    try:
        series = parse_series(args.scrape_series)
        fetch(url, timeout_s=10.0, headers=headers)
    except (RuntimeError, ValueError) as exc:
        raise UsageError(f"--scrape-metrics: {exc}") from None
    return Scrapes(url=url, series=series, headers=headers)


def master_options(args: argparse.Namespace) -> MasterOptions | None:
    """What --master and its options ask for (None: this run starts its own workers, if any)."""
    if not args.master:
        if args.expect_workers is not None:
            raise UsageError("--expect-workers needs --master (--workers N starts N workers on this machine)")
        return None
    if args.expect_workers is None or args.expect_workers < 1:
        raise UsageError("--master needs --expect-workers N (N >= 1): the workers to wait for")
    if args.workers != 1:
        raise UsageError("--master waits for workers started elsewhere: leave out --workers")
    if not 0 <= args.master_bind_port < 65536 or args.expect_workers_max_wait < 0:
        raise UsageError("--master-bind-port must be a port number, --expect-workers-max-wait >= 0")
    return MasterOptions(bind_host=args.master_bind_host, bind_port=args.master_bind_port,
                         max_wait_s=args.expect_workers_max_wait)


def run(args: argparse.Namespace) -> int:
    """The whole run; returns the exit code."""
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(2**31)
    try:
        slo = parse_slo(args.slo) if args.slo else {}
    except ValueError as exc:
        raise UsageError(f"--slo: {exc}") from None
    if args.workers < 1:
        raise UsageError("--workers must be >= 1")
    remote = master_options(args)
    if workload_kind(args) == "trace" and (args.rate is not None or args.sweep or args.find_capacity):
        # checked before any server starts: the trace sets its own send times
        raise UsageError("--workload trace sends at the trace's times: no --rate, --sweep or --find-capacity "
                         "(use --trace-speed)")
    workers = args.expect_workers if remote is not None else args.workers
    steps = build_steps(args)
    search = capacity_search(args, steps, slo) if args.find_capacity else None
    # Each worker sends its share of the count and the rate with the users Locust gives it: a worker
    # given none would never send its share (and the step would still look complete).
    fewest = min(step.users for step in steps)
    if workers > 1 and fewest < workers:
        flag = "--expect-workers" if remote is not None else "--workers"
        raise UsageError(f"{flag} {workers} needs at least {workers} users (one a worker); --users "
                         f"{fewest} is fewer")
    started = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    t0 = time.monotonic()
    with target_server(args) as (base_url, api_key, model, server_exit):
        config = make_config(args, base_url, api_key, model)
        if not args.quiet:  # once the endpoint is known good: a usage error stays one line
            print(f"seed {args.seed} (--seed {args.seed} sends these prompts again)", file=sys.stderr, flush=True)
        workload = workload_from_wire(config.workload)
        if isinstance(workload, TraceWorkload):
            steps = trace_steps(args, steps, workload)
        scrapes = scrape_target(args, base_url, api_key)
        # Locust (and its gevent monkey-patching) only now, after the plain-HTTP preflight.
        import gevent

        from load.runner import run_load
        from load.scrape import scrape_loop
        from load.summary import build_document, calibration_errors, step_document

        say = None if args.quiet else (lambda line: print(line, file=sys.stderr, flush=True))
        scraper = gevent.spawn(scrape_loop, scrapes, args.scrape_interval, 10.0) if scrapes else None
        plan = None
        if search is not None:
            def plan(done: list[Any]) -> StepSpec | None:
                step = search.next_step(done)
                if say and done:
                    say(search.progress_line(done, step))
                return step
        try:
            outcomes = run_load(config, [] if search else steps, workers=workers, remote=remote, slo=slo, progress=say,
                                server_exit=server_exit, plan=plan, early_stop=search.early_stop if search else None)
        finally:
            if scraper is not None:
                scraper.kill()
    step_docs = [step_document(outcome) for outcome in outcomes]
    if scrapes is not None:
        ends = [o.started_at for o in outcomes[1:]] + [time.monotonic()]
        for doc_step, outcome, end in zip(step_docs, outcomes, ends, strict=True):
            doc_step.server = scrapes.between(outcome.started_at, end)
    calibration = None
    if args.calibrate:
        calibration = Calibration(ttft_ms=args.mock_ttft_ms, itl_ms=args.mock_itl_ms,
                                  errors=calibration_errors(step_docs, args.mock_ttft_ms, args.mock_itl_ms))
    settings = {"stream": config.stream, **workload.describe(),
                "prompt_tokens_target": args.prompt_tokens, "dataset": args.dataset, "workers": workers,
                **({"master": f"{remote.bind_host}:{remote.bind_port}"} if remote else {}),
                "arrival": (f"trace x{args.trace_speed:g}" if isinstance(workload, TraceWorkload)
                            else args.arrival if args.rate is not None else "closed loop"),
                "duration_s": steps[0].to_wire()["duration_s"], "warmup_s": steps[0].warmup_s,
                "max_requests": args.max_requests, "slo": slo,
                "extra_body": json.dumps(config.extra_body), "seed": args.seed}
    target = {"base_url": base_url if not (args.calibrate or args.embedded_server) else "embedded reference server",
              "model": model, "path": config.path}
    aborted = next((outcome.aborted for outcome in outcomes if outcome.aborted), None)
    interrupted = any(outcome.interrupted for outcome in outcomes)
    doc = build_document(target=target, settings=settings, steps=step_docs, started_at=started,
                         duration_s=time.monotonic() - t0, calibration=calibration, aborted=aborted,
                         interrupted=interrupted,
                         steps_not_run=[] if search else [step.label for step in steps[len(outcomes):]])
    if search is not None:
        doc.capacity = search.result(outcomes)
    if scrapes is not None:
        doc.server_metrics = {"url": scrapes.url, "series": scrapes.series, "scrapes": len(scrapes.samples),
                                 "failures": scrapes.failures, "last_error": scrapes.last_error}
    from load.export import write_requests
    from reports.load_report import write_load_reports

    paths = write_load_reports(doc, args.report_dir)
    requests_path = write_requests(outcomes, args.report_dir)
    print_summary(doc)
    print(f"reports: {paths['html']} {paths['json']} {paths['csv']} {requests_path}")
    if interrupted:
        print(f"{aborted}: the reports hold what was measured until then (marked partial)", file=sys.stderr)
        return 130
    if aborted:
        print(f"error: {aborted}", file=sys.stderr)
        return 2
    if not doc.fidelity_ok:
        # A capacity search's probe that was not sent as asked never passes (load.capacity): a finding
        # about that level, while the answer stands on levels that were. Any other step: exit 2.
        kind = "note" if search is not None else "error"
        for step in doc.steps:
            for problem in step.fidelity.problems if step.fidelity else []:
                print(f"{kind}: step {step.label} did not send what was asked: {problem}", file=sys.stderr)
        if search is None:
            return 2
    if search is not None:  # probes past the capacity miss the SLO by design; none meeting it is the failure
        return 0 if doc.capacity and doc.capacity["capacity"] is not None else 1
    if not doc.slo_met:
        missed = [f"{s.label} {v.objective}" for s in doc.steps for v in s.slo if not v.met]
        print(f"SLO missed: {', '.join(missed)}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["compare"]:
        from load.compare import main as compare_main

        return compare_main(argv[1:])
    if argv[:1] == ["worker"]:  # a worker of a --master run elsewhere (imports Locust)
        from load.worker import main as worker_main

        return worker_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return run(args)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (RuntimeError, TimeoutError) as exc:  # a server or worker that could not start
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
