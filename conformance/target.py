"""The endpoint under test and a recording HTTP client: every exchange keeps what a failure
report needs (the request, a response excerpt, a curl line that reproduces it)."""

from __future__ import annotations

import http.client
import json
import shlex
import time
from dataclasses import dataclass, field
from typing import Any

import requests

import spec
from spec.endpoint import Endpoint, resolve

REDACTED = "$API_KEY"
HEADER_REDACTED = "$HEADER_VALUE"  # what reports show for a --header value (it may be a credential)


@dataclass(frozen=True)
class Target:
    """What to test and how. `base_url` follows spec.endpoint's rule (a path there is the API root)."""

    base_url: str
    api_key: str | None
    model: str
    profile: str = "documented"
    timeout_s: float = 120.0
    skip_features: frozenset[str] = frozenset()
    max_examples: int = 25
    seed: int = 1234
    headers: tuple[tuple[str, str], ...] = ()  # sent with every request (--header)
    # The spec the target is judged against (a test passes an edited copy; see spec.load).
    api: spec.ApiSpec = field(default_factory=spec.default, compare=False, repr=False)

    @property
    def endpoint(self) -> Endpoint:
        return resolve(self.base_url)

    @property
    def chat_url(self) -> str:
        return self.endpoint.chat_url

    @property
    def models_url(self) -> str:
        return self.endpoint.models_url


@dataclass
class Exchange:
    """One request and its response, with the stream's raw pieces as they arrived."""

    method: str
    url: str
    headers: dict[str, str]
    body: bytes | None
    status: int = 0
    response_headers: dict[str, str] = field(default_factory=dict)
    content: bytes = b""
    pieces: list[tuple[float, bytes]] = field(default_factory=list)  # (seconds since send, bytes)
    elapsed_s: float = 0.0

    @property
    def content_type(self) -> str:
        return self.response_headers.get("content-type", "").split(";")[0].strip().lower()

    def json(self) -> Any:
        """The response body as JSON (raises ValueError when it is not)."""
        return json.loads(self.content)

    def request_json(self) -> Any:
        """The request body as JSON, or its text when it was not JSON."""
        if self.body is None:
            return None
        try:
            return json.loads(self.body)
        except (UnicodeDecodeError, json.JSONDecodeError):
            return self.body.decode("utf-8", errors="replace")

    def excerpt(self, limit: int = 2000) -> str:
        """Status line, content type and the start of the body, for a report."""
        text = self.content.decode("utf-8", errors="replace")
        more = f"\n... ({len(self.content) - limit} more bytes)" if len(text) > limit else ""
        return f"HTTP {self.status} {self.content_type}\n{text[:limit]}{more}"

    def curl(self) -> str:
        """A curl command that sends this request again (the API key left as $API_KEY)."""
        parts = ["curl", "-sS", "-N", "-X", self.method, shlex.quote(self.url)]
        for name, value in self.headers.items():
            placeholder = value in (f"Bearer {REDACTED}", HEADER_REDACTED)  # double quotes: the shell fills it in
            parts += ["-H", f'"{name}: {value}"' if placeholder else shlex.quote(f"{name}: {value}")]
        if self.body is not None:
            parts += ["--data-binary", shlex.quote(self.body.decode("utf-8", errors="replace"))]
        return " ".join(parts)


def request_headers(target: Target, headers: dict[str, str] | None = None,
                    auth: bool = True) -> tuple[dict[str, str], dict[str, str]]:
    """(sent, shown) headers of a request to `target`: its --header values and bearer key (unless
    `auth` is False), then `headers`; `shown` redacts every credential for the reports."""
    given = dict(headers or {})
    overridden = {name.lower() for name in given} | (set() if auth else {"authorization"})
    sent = {name: value for name, value in target.headers if name.lower() not in overridden}
    shown = {name: HEADER_REDACTED for name in sent}
    sent.update(given)
    shown.update(given)
    if auth and target.api_key and not any(name.lower() == "authorization" for name in sent):
        sent["Authorization"] = f"Bearer {target.api_key}"
        shown["Authorization"] = f"Bearer {REDACTED}"
    return sent, shown


class Client:
    """Sends requests to the target and records each exchange."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.session = requests.Session()
        self.exchanges: list[Exchange] = []

    def close(self) -> None:
        self.session.close()

    def chat_body(self, **params: Any) -> dict[str, Any]:
        """A small valid request for the target's model, with `params` merged in."""
        body: dict[str, Any] = {
            "model": self.target.model,
            "messages": [{"role": "user", "content": "Write one short sentence about cats."}],
            "max_tokens": 8,
        }
        body.update(params)
        return {k: v for k, v in body.items() if v is not _OMIT}

    def request(
        self,
        method: str,
        url: str,
        *,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        auth: bool = True,
        stream: bool = False,
    ) -> Exchange:
        """Send one request; `auth=False` leaves the Authorization header out (also a --header one)."""
        sent, shown = request_headers(self.target, headers, auth)
        exchange = Exchange(method=method, url=url, headers=shown, body=body)
        self.exchanges.append(exchange)
        start = time.perf_counter()
        try:
            response = self.session.request(
                method, url, data=body, headers=sent, stream=True, timeout=self.target.timeout_s
            )
        except requests.ConnectionError as exc:
            if not _stale_keep_alive(exc):
                raise
            # The server dropped a kept-alive connection without `Connection: close` (llama.cpp's
            # llama-server after a response, llama-cpp-python's server after a 500): that is no
            # finding of the check that happens to come next (one deviation, one failure), so the
            # request goes once more, on a new connection; a server that drops that one too is seen.
            self.session.close()
            self.session = requests.Session()
            start = time.perf_counter()
            response = self.session.request(
                method, url, data=body, headers=sent, stream=True, timeout=self.target.timeout_s
            )
        try:
            exchange.status = response.status_code
            exchange.response_headers = {k.lower(): v for k, v in response.headers.items()}
            buffer = bytearray()
            for piece in response.raw.stream(65536, decode_content=True) if stream else [response.content]:
                if piece:
                    exchange.pieces.append((time.perf_counter() - start, piece))
                    buffer += piece
            exchange.content = bytes(buffer)
        finally:
            response.close()
        exchange.elapsed_s = time.perf_counter() - start
        return exchange

    def chat(self, body: Any, *, headers: dict[str, str] | None = None, auth: bool = True) -> Exchange:
        """POST a chat-completions request; a streaming body is read piece by piece."""
        raw = body if isinstance(body, bytes) else json.dumps(body).encode("utf-8")
        hdrs = {"Content-Type": "application/json"}
        hdrs.update(headers or {})
        stream = isinstance(body, dict) and bool(body.get("stream"))
        return self.request("POST", self.target.chat_url, body=raw, headers=hdrs, auth=auth, stream=stream)


def _stale_keep_alive(exc: requests.ConnectionError) -> bool:
    """Whether the connection was closed or reset before a response came (what a reused connection
    that the server had dropped looks like), as opposed to a refused connection or a timeout."""
    seen: list[BaseException] = [exc]
    for _ in range(50):  # a chain of causes, searched a bounded number of steps
        if not seen:
            break
        cause = seen.pop()
        if isinstance(cause, http.client.RemoteDisconnected | ConnectionResetError):
            return True
        seen += [item for item in (cause.__cause__, cause.__context__, *cause.args) if isinstance(item, BaseException)]
    return False


class _Omit:
    def __repr__(self) -> str:
        return "OMIT"


_OMIT = _Omit()
OMIT: Any = _OMIT
"""Pass as a value to `Client.chat_body` to leave that field out of the request."""
