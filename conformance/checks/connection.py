"""Persistent connections: a server that closes a connection right after a response says so.

HTTP/1.1 connections persist unless a side says `Connection: close` (RFC 9112, section 9.3).
A server that closes silently after each response (llama.cpp's llama-server after a stream)
makes a client that reuses the connection lose its next request. Servers may close idle
connections at any time, so only a close within moments of the response counts. This is a
should-level rule (RFC 9112, section 9.6: a server that does not support persistent
connections MUST send `Connection: close`; one that closes anyway is merely unfriendly).
"""

from __future__ import annotations

import http.client
import json
import select
import socket
import ssl
from typing import Any
from urllib.parse import urlsplit

from conformance.context import Context
from conformance.registry import Skipped, check
from conformance.target import Exchange, request_headers

CLOSE_WAIT_S = 0.5  # a close this soon after a complete response belongs to that response


def _closed_by_peer(sock: socket.socket) -> bool:
    """Whether the peer closed `sock` within CLOSE_WAIT_S (readable with nothing to read)."""
    readable, _, _ = select.select([sock], [], [], CLOSE_WAIT_S)
    if not readable:
        return False
    try:
        if isinstance(sock, ssl.SSLSocket):
            return sock.recv(1) == b""  # TLS cannot peek; the connection is closed by us next anyway
        return sock.recv(1, socket.MSG_PEEK) == b""
    except (TimeoutError, ssl.SSLWantReadError):
        return False  # TLS: a non-application record and nothing more within the timeout
    except (OSError, ssl.SSLError):
        return True  # reset


def _send_on_fresh_connection(ctx: Context, body: dict[str, Any]) -> tuple[Exchange, bool]:
    """POST `body` on a connection of its own, read the whole response, and tell whether the
    server then closed the connection; the exchange is recorded like every other."""
    target = ctx.target
    parts = urlsplit(target.chat_url)
    factory = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    connection = factory(parts.hostname or "127.0.0.1", parts.port, timeout=target.timeout_s)
    raw = json.dumps(body).encode("utf-8")
    headers, shown = request_headers(target, {"Content-Type": "application/json"})
    exchange = Exchange(method="POST", url=target.chat_url, headers=shown, body=raw)
    ctx.client.exchanges.append(exchange)
    try:
        connection.request("POST", parts.path + (f"?{parts.query}" if parts.query else ""), body=raw,
                           headers=headers)
        response = connection.getresponse()
        exchange.content = response.read()
        exchange.status = response.status
        exchange.response_headers = {name.lower(): value for name, value in response.getheaders()}
        announced = "close" in exchange.response_headers.get("connection", "").lower()
        if announced or response.version < 11 or connection.sock is None:
            return exchange, False  # said so (or HTTP/1.0, where closing is the default)
        return exchange, _closed_by_peer(connection.sock)
    finally:
        connection.close()


@check("connection.close_announced", "connection", "transport", severity="should")
def close_announced(ctx: Context) -> None:
    """(should) After a complete answer, non-stream and streamed, the server keeps the connection
    open or says `Connection: close`: it never closes it silently."""
    for stream in (False, True):
        exchange, closed = _send_on_fresh_connection(ctx, ctx.body(stream=stream))
        mode = "streamed" if stream else "non-stream"
        if exchange.status != 200:  # a failed request is other checks' finding; this rule is about answers
            raise Skipped(f"cannot judge: the {mode} request was answered {exchange.status}, not 200")
        ctx.expect(not closed,
                   f"the server closed the connection within {CLOSE_WAIT_S} s after a complete {mode} answer "
                   "without saying Connection: close (should, RFC 9112 section 9.6): a client reusing it "
                   "loses its next request", exchange)
