"""The floor for any client's TTFT/ITL error against the mock engine: a bare socket, one request at a time.

The mock's truth is counted from when its HTTP handler starts; a client sees the same token a
little later (loopback, aiohttp's request path, the server's SSE write). This script measures that
floor with the least client possible: a blocking socket with TCP_NODELAY on one keep-alive
connection, sequential streamed requests, timestamps right after each `recv`. Whatever a load
generator measures above this is the load generator's own error (or queueing under load).

    python benchmarks/mock_raw_socket_baseline.py --requests 50
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import time

from reference_server.launcher import running_server


def one_request(sock: socket.socket, request: bytes) -> tuple[float, list[float]]:
    """(TTFT ms, token arrival times ms) of one streamed request on an open connection."""
    start = time.perf_counter()
    sock.sendall(request)
    buffer, tokens = b"", []
    while b"data: [DONE]" not in buffer:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("server closed the connection")
        now = (time.perf_counter() - start) * 1000
        tokens += [now] * (data.count(b'"content":"') - data.count(b'"content":""'))
        buffer += data
    while not buffer.endswith(b"0\r\n\r\n"):  # the chunked body's end, so the next request starts clean
        buffer += sock.recv(65536)
    return tokens[0], tokens


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--ttft-ms", type=float, default=100.0)
    parser.add_argument("--itl-ms", type=float, default=10.0)
    parser.add_argument("--output-tokens", type=int, default=16)
    args = parser.parse_args()
    with running_server("--ttft-ms", str(args.ttft_ms), "--itl-ms", str(args.itl_ms), engine="mock",
                        api_key=None) as server:
        host, port = server.base_url.removeprefix("http://").split(":")
        body = json.dumps({"model": server.model, "max_tokens": args.output_tokens, "stream": True,
                           "logit_bias": {"0": -100}, "messages": [{"role": "user", "content": "hi"}]}).encode()
        request = (f"POST /v3/openai/chat/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                   f"Content-Length: {len(body)}\r\n\r\n").encode() + body
        with socket.create_connection((host, int(port))) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            one_request(sock, request)  # warm-up
            ttfts, gaps = [], []
            for _ in range(args.requests):
                ttft, tokens = one_request(sock, request)
                ttfts.append(ttft)
                gaps += [b - a for a, b in zip(tokens, tokens[1:], strict=False)]
    print(f"{args.requests} sequential requests, truth TTFT {args.ttft_ms:g} ms, ITL {args.itl_ms:g} ms")
    print(f"TTFT p50 {statistics.median(ttfts):.3f} ms (error {statistics.median(ttfts) - args.ttft_ms:+.3f}), "
          f"max {max(ttfts):.3f} ms")
    print(f"ITL  p50 {statistics.median(gaps):.3f} ms (error {statistics.median(gaps) - args.itl_ms:+.3f}), "
          f"max {max(gaps):.3f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
