"""HTTP-layer throughput of the reference server on the mock engine at N concurrent clients.

Non-stream requests/s and streamed tokens/s, with the mock's TTFT and inter-token gap at
zero so the number is the server's own overhead (validation, stop matching, JSON, SSE).
Bounded: each phase runs for --seconds against 127.0.0.1 only.

    python benchmarks/mock_throughput.py --clients 32 --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import time

import aiohttp

from reference_server.launcher import running_server


async def _client(session: aiohttp.ClientSession, url: str, body: dict[str, object], stream: bool,
                  deadline: float, totals: dict[str, int]) -> None:
    while time.perf_counter() < deadline:
        async with session.post(url, json=body) as response:
            if response.status != 200:
                totals["errors"] += 1
                await response.read()
                continue
            if stream:
                async for line in response.content:
                    if line.startswith(b"data: {") and b'"content":"' in line and b'"content":""' not in line:
                        totals["tokens"] += 1
            else:
                data = await response.json()
                totals["tokens"] += data["usage"]["completion_tokens"]
            totals["requests"] += 1


async def _phase(url: str, key: str, model: str, clients: int, seconds: float, stream: bool,
                 max_tokens: int) -> dict[str, float]:
    body = {"model": model, "messages": [{"role": "user", "content": "Tell me a story."}],
            "max_tokens": max_tokens, "stream": stream, "logit_bias": {"0": -100}}  # no early EOS
    totals = {"requests": 0, "tokens": 0, "errors": 0}
    connector = aiohttp.TCPConnector(limit=clients)
    headers = {"Authorization": f"Bearer {key}"}
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:
        start = time.perf_counter()
        deadline = start + seconds
        await asyncio.gather(*(_client(session, url, body, stream, deadline, totals) for _ in range(clients)))
        elapsed = time.perf_counter() - start
    return {"requests_per_s": totals["requests"] / elapsed, "tokens_per_s": totals["tokens"] / elapsed,
            "errors": totals["errors"], "requests": totals["requests"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--max-tokens", type=int, default=32)
    args = parser.parse_args(argv)
    with running_server("--ttft-ms", "0", "--itl-ms", "0", "--max-queue", str(args.clients * 2),
                        engine="mock") as server:
        url = server.api_base + "/chat/completions"
        plain = asyncio.run(_phase(url, server.api_key or "", server.model, args.clients, args.seconds,
                                   False, args.max_tokens))
        streamed = asyncio.run(_phase(url, server.api_key or "", server.model, args.clients, args.seconds,
                                      True, args.max_tokens))
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"mock engine, {args.clients} clients, {args.seconds:.0f} s per phase, max_tokens {args.max_tokens}")
    print(f"non-stream: {plain['requests_per_s']:.1f} requests/s ({plain['tokens_per_s']:.0f} tokens/s), "
          f"{plain['errors']} errors")
    print(f"stream:     {streamed['tokens_per_s']:.0f} streamed tokens/s ({streamed['requests_per_s']:.1f} "
          f"requests/s), {streamed['errors']} errors")
    return 0


if __name__ == "__main__":
    sys.exit(main())
