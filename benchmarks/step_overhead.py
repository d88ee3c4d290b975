"""What our server spends around the model, timed inside it (issue 24).

The CPU reference server runs in this process (the llama.cpp engine, its defaults) and a client in
a subprocess streams answers from it over loopback, `--streams` requests at a time (each stream
one request after another). Timed here:

- before the prompt: request arrival (the handler's clock) -> the engine's `stream` entered
  (body read, validation, chat template, tokens; the prompt starts right after);
- decode steps (one token of every answering sequence), by how many sequences they held: the
  `llama_decode` itself, and the gap after it until the next `llama_decode` is called (the
  step's sampling, its bookkeeping, the hand-over to the event loop), with the sampling (every
  row of the step, `sample_rows`) and the hand-over (`Outbox.flush`) on their own.

Every figure is a median over the requests (or steps) of the run. The wrappers add about a
microsecond each.

    python benchmarks/step_overhead.py --requests 12 --output-tokens 64
    python benchmarks/step_overhead.py --streams 8 --requests 6
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import functools
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aiohttp import web  # noqa: E402

from reference_server.app import build_app  # noqa: E402
from reference_server.config import ServerConfig  # noqa: E402
from reference_server.engines import llamacpp as llamacpp_engine  # noqa: E402
from reference_server.engines import llamacpp_batch  # noqa: E402

CLIENT = r"""
import http.client, json, random, sys, threading
port, requests, tokens, streams = (int(v) for v in sys.argv[1:5])
words = "apple river stone cloud tiger music garden silver window candle forest ocean paper bridge".split()

def one_stream(index, count):
    rng = random.Random(5 + index)
    connection = http.client.HTTPConnection("127.0.0.1", port)
    for _ in range(count):
        ask(connection, rng)

def ask(connection, rng):
    body = {"model": "SmolLM2-135M-Instruct", "max_tokens": tokens, "stream": True, "temperature": 0.8,
            "messages": [{"role": "user", "content": " ".join(rng.choice(words) for _ in range(7))}],
            "logit_bias": {"0": -100, "2": -100}}
    connection.request("POST", "/v3/openai/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
    response = connection.getresponse()
    assert response.status == 200, response.status
    while response.readline():
        pass

one_stream(-1, 1)  # warms up, alone
threads = [threading.Thread(target=one_stream, args=(i, requests)) for i in range(streams)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
"""


class Timings:
    """Durations by name, in seconds, from the wrappers below."""

    def __init__(self) -> None:
        self.values: dict[str, list[float]] = collections.defaultdict(list)
        self.last_decode_end: float | None = None
        self.last_decode_label: str | None = None  # set after a decode step's llama_decode
        self.step_rows = 0  # sequences in the decode step under way (0: not in one)
        self.step_sampling = 0.0

    def wrap(self, owner: Any, name: str, label: str) -> None:
        original = getattr(owner, name)

        @functools.wraps(original)
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.values[label].append(time.perf_counter() - started)

        setattr(owner, name, timed)

    def wrap_decode(self) -> None:
        """llama_decode's own time and the gap after it, for decode steps, by sequences per step."""
        original = llamacpp_batch.llama_cpp.llama_decode

        def decode(ctx: Any, batch: Any) -> int:
            started = time.perf_counter()
            if self.last_decode_label is not None and self.last_decode_end is not None:
                self.values[f"gap after a decode step, {self.last_decode_label}"].append(started - self.last_decode_end)
            result = original(ctx, batch)
            self.last_decode_end = time.perf_counter()
            self.last_decode_label = None
            if self.step_rows:
                self.last_decode_label = f"{self.step_rows} seq"
                self.values[f"llama_decode of a decode step, {self.last_decode_label}"].append(
                    self.last_decode_end - started)
            return result

        llamacpp_batch.llama_cpp.llama_decode = decode
        original_step = llamacpp_batch.BatchScheduler._decode_step

        def decode_step(scheduler: Any, slots: list[Any]) -> None:
            self.step_rows, self.step_sampling = len(slots), 0.0
            try:
                original_step(scheduler, slots)
            finally:
                self.values[f"sampling, whole decode step, {len(slots)} seq"].append(self.step_sampling)
                self.step_rows = 0

        llamacpp_batch.BatchScheduler._decode_step = decode_step  # type: ignore[method-assign]
        original_sample_rows = llamacpp_batch.sample_rows

        def sample_rows(ctx: Any, rows: Any, work: Any) -> Any:
            started = time.perf_counter()
            try:
                return original_sample_rows(ctx, rows, work)
            finally:
                self.step_sampling += time.perf_counter() - started

        llamacpp_batch.sample_rows = sample_rows

    def wrap_arrival(self) -> None:
        original = llamacpp_engine.LlamaCppEngine.stream

        async def stream(engine: Any, prompt: list[int], params: Any, cancel: Any, started: float | None = None) -> Any:
            if started is not None:
                self.values["arrival -> engine stream"].append(asyncio.get_running_loop().time() - started)
            async for token in original(engine, prompt, params, cancel, started):
                yield token

        llamacpp_engine.LlamaCppEngine.stream = stream  # type: ignore[method-assign]


async def run(requests: int, output_tokens: int, port: int, streams: int) -> Timings:
    timings = Timings()
    timings.wrap_decode()
    timings.wrap_arrival()
    timings.wrap(llamacpp_batch.Outbox, "flush", "hand-over (Outbox.flush)")
    engine = llamacpp_engine.LlamaCppEngine()
    runner = web.AppRunner(build_app(engine, ServerConfig(auth_required=False)), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        client = await asyncio.create_subprocess_exec(sys.executable, "-c", CLIENT, str(port), str(requests),
                                                      str(output_tokens), str(streams))
        if await client.wait() != 0:
            raise SystemExit("the client failed")
    finally:
        await runner.cleanup()
    return timings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=12,
                        help="streamed answers measured per stream (after one warm-up request alone)")
    parser.add_argument("--streams", type=int, default=1, help="requests under way at once")
    parser.add_argument("--output-tokens", type=int, default=64)
    parser.add_argument("--port", type=int, default=8941)
    args = parser.parse_args(argv)
    timings = asyncio.run(run(args.requests, args.output_tokens, args.port, args.streams))
    for label, values in sorted(timings.values.items()):
        values = values[1:] if label.startswith("arrival") else values  # the warm-up request
        print(f"{label:48s} median {1e6 * statistics.median(values):8.0f} us   mean "
              f"{1e6 * statistics.mean(values):8.0f} us   n={len(values)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
