"""`python -m load.worker`: one Locust worker process of a distributed run (started by the runner).

It takes its settings from the master's `chatspec_config` message, starts its share of each step
on `chatspec_step`, stops sending on `chatspec_stop`, and answers `chatspec_poll` (progress) and
`chatspec_collect` (every raw record plus its own CPU and event-loop lag) back to the master.
"""

from __future__ import annotations

import argparse
import sys

import gevent
from locust.env import Environment

from load.config import LoadConfig, StepSpec
from load.process import ProcessState
from load.records import RequestRecord
from load.users import bound_user_class, probe_loop_lag


def _send(environment: Environment, kind: str, data: dict) -> None:
    environment.runner.send_message(kind, data)


def register_handlers(environment: Environment, process: ProcessState, workers: int) -> None:
    """Wire the chatspec messages to this worker's process state."""
    runner = environment.runner

    def on_config(environment: Environment, msg, **_kw) -> None:
        process.configure(LoadConfig.from_wire(msg.data), worker_index=runner.worker_index, workers=workers)
        _send(environment, "chatspec_ack", {"worker": runner.worker_index})

    def on_step(environment: Environment, msg, **_kw) -> None:
        process.begin_step(StepSpec.from_wire(msg.data))

    def on_stop(environment: Environment, msg, **_kw) -> None:
        process.stop()

    def on_poll(environment: Environment, msg, **_kw) -> None:
        _send(environment, "chatspec_status", process.status())

    def on_collect(environment: Environment, msg, **_kw) -> None:
        records: list[RequestRecord] = process.records
        _send(environment, "chatspec_records", {"worker": runner.worker_index, "health": process.health(),
                                                "counts": process.counts().to_wire(),
                                                "records": [r.to_wire() for r in records]})

    runner.register_message("chatspec_config", on_config)
    runner.register_message("chatspec_step", on_step)
    runner.register_message("chatspec_stop", on_stop)
    runner.register_message("chatspec_poll", on_poll)
    runner.register_message("chatspec_collect", on_collect)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m load.worker", description=__doc__)
    parser.add_argument("--master-host", default="127.0.0.1")
    parser.add_argument("--master-port", type=int, required=True)
    parser.add_argument("--workers", type=int, required=True, help="how many workers the run has")
    args = parser.parse_args(argv)
    process = ProcessState()
    environment = Environment(user_classes=[bound_user_class(process)])
    environment.create_worker_runner(args.master_host, args.master_port)
    register_handlers(environment, process, args.workers)
    gevent.spawn(probe_loop_lag, process)
    environment.runner.greenlet.join()
    return 0


if __name__ == "__main__":
    sys.exit(main())
