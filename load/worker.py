"""`python -m load.worker` (or `python -m load worker`): one load worker of a distributed run.

Started by `python -m load --workers N` on this machine, or by hand or an orchestrator on other
machines for `python -m load --master --expect-workers N`. It says hello with its chatspec version
and protocol (a master of another release refuses it: exit 2), takes its settings, index and the
worker count from the master's `chatspec_config`, starts its share of each step on
`chatspec_step`, stops sending on `chatspec_stop`, and answers `chatspec_poll` with its progress
and every record made since the last answer, so the master holds them even if this process dies;
`chatspec_collect` gets the rest with its CPU and event-loop lag. Exit 0 when the master ends the
run; 2 when refused, when no master answers, or when the master goes silent mid-run.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time
from typing import Any

import gevent
import gevent.event
from locust.env import Environment

from load import version
from load.config import LoadConfig, StepSpec
from load.process import ProcessState
from load.users import bound_user_class, probe_loop_lag


class Reporter:
    """What this worker has told the master of its current step's records (they go in order)."""

    def __init__(self, process: ProcessState) -> None:
        self.process = process
        self.upto = 0

    def new_records(self) -> dict[str, Any]:
        records = self.process.records
        first, self.upto = self.upto, len(records)
        return {"first": first, "records": [r.to_wire() for r in records[first:]]}


def register_handlers(environment: Environment, process: ProcessState,
                      refused: gevent.event.AsyncResult, quiet: bool = False) -> None:
    """Wire the chatspec messages to this worker's process state."""
    runner = environment.runner
    reporter = Reporter(process)

    def on_config(environment: Environment, msg: Any, **_kw: Any) -> None:
        data = msg.data
        process.configure(LoadConfig.from_wire(data["config"]), worker_index=data["worker"], workers=data["workers"])
        if not quiet:
            print(f"load worker {data['worker']} of {data['workers']}: settings taken", file=sys.stderr, flush=True)
        runner.send_message("chatspec_ack", {"worker": process.worker_index})

    def on_step(environment: Environment, msg: Any, **_kw: Any) -> None:
        process.begin_step(StepSpec.from_wire(msg.data))
        reporter.upto = 0

    def on_stop(environment: Environment, msg: Any, **_kw: Any) -> None:
        process.stop()

    def on_poll(environment: Environment, msg: Any, **_kw: Any) -> None:
        runner.send_message("chatspec_status", {**process.status(), **reporter.new_records()})

    def on_collect(environment: Environment, msg: Any, **_kw: Any) -> None:
        # Stop first, as the local backend does: a request still open is cut off now, and its record
        # (kind cut_off) goes to the master with the rest instead of staying behind here.
        process.stop()
        runner.stop()
        runner.send_message("chatspec_records", {
            "worker": process.worker_index, "step": None if process.step is None else process.step.index,
            "health": process.health(), "counts": process.counts().to_wire(), **reporter.new_records()})

    def on_refused(environment: Environment, msg: Any, **_kw: Any) -> None:
        refused.set(msg.data["reason"])

    for kind, handler in (("chatspec_config", on_config), ("chatspec_step", on_step), ("chatspec_stop", on_stop),
                          ("chatspec_poll", on_poll), ("chatspec_collect", on_collect),
                          ("chatspec_refused", on_refused)):
        runner.register_message(kind, handler)


def hello() -> dict[str, Any]:
    """Who this worker is, for the master to check and to name it in messages."""
    return {"version": version.VERSION, "protocol": version.PROTOCOL, "host": socket.gethostname(),
            "pid": os.getpid()}


def bind_source(address: str) -> None:
    """Make this process's connection to the master leave from `address` (a machine with several
    addresses; 127.0.0.x standing in for another host on one machine). Locust has no option for it;
    ZeroMQ's 'tcp://source:0;destination:port' endpoint does it, so Locust's client class is swapped
    for one that connects that way (this process is a worker and nothing else)."""
    import zmq.green as zmq
    from locust.rpc import zmqrpc

    class BoundClient(zmqrpc.Client):
        def __init__(self, host: str, port: int, identity: str) -> None:
            zmqrpc.BaseSocket.__init__(self, zmq.DEALER, self.ipv4_only(host, port))
            self.socket.setsockopt(zmq.IDENTITY, identity.encode())
            self.socket.connect(f"tcp://{address}:0;{host}:{port}")

    zmqrpc.Client = BoundClient  # type: ignore[misc]


def master_gone(last_heartbeat: float | None) -> bool:
    """Whether Locust ended this worker because its master's heartbeats stopped (not by a quit)."""
    from locust import runners

    return last_heartbeat is not None and time.time() - last_heartbeat >= runners.MASTER_HEARTBEAT_TIMEOUT


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m load.worker", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--master-host", default="127.0.0.1", help="the host `python -m load --master` runs on")
    parser.add_argument("--master-port", type=int, default=5557, help="its --master-bind-port")
    parser.add_argument("--bind-host", default=None,
                        help="the local address the connection to the master leaves from; None: the system's "
                             "choice")
    parser.add_argument("--quiet", action="store_true",
                        help="no line when the settings are taken (the processes of a --workers run)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Serve one run; 0 when the master ended it, 2 when refused or no master answered."""
    args = build_parser().parse_args(argv)
    if args.bind_host:
        bind_source(args.bind_host)
    process = ProcessState()
    environment = Environment(user_classes=[bound_user_class(process)])
    try:
        runner = environment.create_worker_runner(args.master_host, args.master_port)
    except ConnectionError:  # Locust retries for about 5 minutes
        print(f"error: no load master answered at {args.master_host}:{args.master_port}", file=sys.stderr)
        return 2
    refused = gevent.event.AsyncResult()
    register_handlers(environment, process, refused, quiet=args.quiet)
    runner.send_message("chatspec_hello", hello())
    gevent.spawn(probe_loop_lag, process)
    ended = gevent.spawn(runner.greenlet.join)
    gevent.wait([ended, refused], count=1)
    if not refused.ready() and master_gone(runner.last_heartbeat_timestamp):
        # Locust stops the users and quits when its master's heartbeats stop: say so, not exit 0
        print(f"error: the load master at {args.master_host}:{args.master_port} stopped answering; "
              "this worker stopped its users", file=sys.stderr, flush=True)
        return 2
    if refused.ready():
        print(f"error: the load master at {args.master_host}:{args.master_port} refused this worker: "
              f"{refused.get()}", file=sys.stderr, flush=True)
        runner.send_message("quit")
        gevent.sleep(0.2)  # let the message go out
        runner.quit()
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
