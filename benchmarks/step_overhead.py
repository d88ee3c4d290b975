"""What our server spends around the model at one stream, timed inside it (issue 24).

The CPU reference server runs in this process (the llama.cpp engine, its defaults) and a client in
a subprocess streams answers from it over loopback, one request at a time. Timed here:

- before the prompt: request arrival (the handler's clock) -> the engine's `stream` entered
  (body read, validation, chat template, tokens; the prompt starts right after);
- between decode steps: one `llama_decode` returning -> the next one called (the token's sampling,
  the step's bookkeeping, the hand-over to the event loop), with the sampling and the hand-over
  (`Outbox.flush`) on their own.

Every figure is a median over the requests (or steps) of the run. The wrappers add about a
microsecond each.

    python benchmarks/step_overhead.py --requests 12 --output-tokens 64
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
from reference_server.engines import llamacpp_batch, llamacpp_sampler  # noqa: E402

CLIENT = r"""
import http.client, json, random, sys
port, requests, tokens = (int(v) for v in sys.argv[1:4])
words = "apple river stone cloud tiger music garden silver window candle forest ocean paper bridge".split()
rng = random.Random(5)
connection = http.client.HTTPConnection("127.0.0.1", port)
for _ in range(requests + 1):  # the first warms up
    body = {"model": "SmolLM2-135M-Instruct", "max_tokens": tokens, "stream": True, "temperature": 0.8,
            "messages": [{"role": "user", "content": " ".join(rng.choice(words) for _ in range(7))}],
            "logit_bias": {"0": -100, "2": -100}}
    connection.request("POST", "/v3/openai/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
    response = connection.getresponse()
    while response.readline():
        pass
"""


class Timings:
    """Durations by name, in seconds, from the wrappers below."""

    def __init__(self) -> None:
        self.values: dict[str, list[float]] = collections.defaultdict(list)
        self.last_decode_end: float | None = None

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
        original = llamacpp_batch.llama_cpp.llama_decode

        def decode(ctx: Any, batch: Any) -> int:
            started = time.perf_counter()
            one_token = batch.n_tokens == 1
            if one_token and self.last_decode_end is not None:
                self.values["between two decode steps"].append(started - self.last_decode_end)
            result = original(ctx, batch)
            self.last_decode_end = time.perf_counter()
            if one_token:
                self.values["decode step (llama_decode, one token)"].append(self.last_decode_end - started)
            return result

        llamacpp_batch.llama_cpp.llama_decode = decode

    def wrap_arrival(self) -> None:
        original = llamacpp_engine.LlamaCppEngine.stream

        async def stream(engine: Any, prompt: list[int], params: Any, cancel: Any, started: float | None = None) -> Any:
            if started is not None:
                self.values["arrival -> engine stream"].append(asyncio.get_running_loop().time() - started)
            async for token in original(engine, prompt, params, cancel, started):
                yield token

        llamacpp_engine.LlamaCppEngine.stream = stream  # type: ignore[method-assign]


async def run(requests: int, output_tokens: int, port: int) -> Timings:
    timings = Timings()
    timings.wrap_decode()
    timings.wrap_arrival()
    timings.wrap(llamacpp_sampler.FullVocabSampler, "sample", "sampling (numpy, full vocabulary)")
    timings.wrap(llamacpp_batch.Outbox, "flush", "hand-over (Outbox.flush)")
    engine = llamacpp_engine.LlamaCppEngine()
    runner = web.AppRunner(build_app(engine, ServerConfig(auth_required=False)), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        client = await asyncio.create_subprocess_exec(sys.executable, "-c", CLIENT, str(port), str(requests),
                                                      str(output_tokens))
        if await client.wait() != 0:
            raise SystemExit("the client failed")
    finally:
        await runner.cleanup()
    return timings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=12, help="streamed answers measured (after one warm-up)")
    parser.add_argument("--output-tokens", type=int, default=64)
    parser.add_argument("--port", type=int, default=8941)
    args = parser.parse_args(argv)
    timings = asyncio.run(run(args.requests, args.output_tokens, args.port))
    for label, values in timings.values.items():
        values = values[1:] if label.startswith("arrival") else values  # the warm-up request
        print(f"{label:36s} median {1e6 * statistics.median(values):8.0f} us   mean "
              f"{1e6 * statistics.mean(values):8.0f} us   n={len(values)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
