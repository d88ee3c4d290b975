"""The same chat scenario for Locust's own UI or CLI: `locust -f load/locustfile.py --host URL --model M`.

Locust's UI shows its own (rounded) statistics: "chat stream"/"chat" rows are end-to-end times and
"first token" rows TTFT. For exact percentiles, ITL, TPOT, goodput and the HTML report use
`python -m load`, which drives these same users. Here the workload is synthetic (--prompt-words,
--output-tokens) or --dataset; the other workloads (which plan lengths in the endpoint's tokens
before the run) are `python -m load --workload ...` only.
"""

from __future__ import annotations

import os

import gevent
from locust import events

from load.config import API_PATH, LoadConfig, StepSpec
from load.lengths import fixed_length
from load.process import ProcessState
from load.prompts import load_dataset
from load.users import bound_user_class, probe_loop_lag
from load.workloads.dataset import DatasetWorkload
from load.workloads.synthetic import SyntheticWorkload

# Locust finds the user class at module level; it is bound to this process's state (Locust runs
# one locustfile per process, so here, and only here, the state lives as long as the module).
PROCESS = ProcessState()
ChatUser = bound_user_class(PROCESS)
__all__ = ["ChatUser"]


@events.init_command_line_parser.add_listener
def _arguments(parser) -> None:
    parser.add_argument("--model", default=os.environ.get("CHATSPEC_MODEL", ""), help="model name sent")
    parser.add_argument("--api-key", default=os.environ.get("CHATSPEC_API_KEY", ""), help="bearer key")
    parser.add_argument("--api-path", default=API_PATH, help="API path under --host")
    parser.add_argument("--no-stream", action="store_true", default=False, help="non-streamed requests")
    parser.add_argument("--output-tokens", type=int, default=64, help="max_tokens of every request")
    parser.add_argument("--prompt-words", type=int, default=32, help="synthetic prompt length in words")
    parser.add_argument("--dataset", default="", help="JSONL dataset of message lists")


@events.test_start.add_listener
def _start(environment, **_kw) -> None:
    options = environment.parsed_options
    if options is None:  # driven by `python -m load`, which makes its own processes' state
        return
    output = fixed_length(options.output_tokens)
    workload = (DatasetWorkload(load_dataset(options.dataset), output, options.dataset) if options.dataset
                else SyntheticWorkload(output, words=options.prompt_words))
    config = LoadConfig(base_url=(environment.host or "").rstrip("/"), model=options.model,
                        api_key=options.api_key or None, stream=not options.no_stream, path=options.api_path,
                        workload=workload.to_wire())
    PROCESS.configure(config)
    PROCESS.begin_step(StepSpec(index=0, users=options.num_users or 1, duration_s=float("inf"), warmup_s=0.0))
    gevent.spawn(probe_loop_lag, PROCESS)
