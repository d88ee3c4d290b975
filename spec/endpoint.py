"""Where the API lives on a server: one rule for every tool that takes a `--base-url`.

Real servers put the chat-completions API under different roots (`/v1` for llama.cpp, vLLM,
LiteLLM and OpenAI itself; `/v3/openai` for the API this project specifies). The rule:

- a base URL with a path names the API root: `http://h:8000/v1` -> `/v1/chat/completions` and
  `/v1/models`; `https://api.example.com/v3/openai` -> `/v3/openai/chat/completions`;
- a bare host (`http://h:8000`) means the spec's own root, `/v3/openai`;
- a base URL that already ends in `/chat/completions` is taken as that chat URL (its root is the rest).

`--header 'Name: value'` adds a header to every request (gateways that authenticate with
`api-key:`), and a run without `--model` uses the one model that `{root}/models` lists.
It uses urllib (no requests, no gevent) and the spec package (which reads the YAML spec with
PyYAML): the load tool imports it, and resolves the endpoint, before gevent patches anything.
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from dataclasses import dataclass
from urllib.parse import urlsplit

import spec

CHAT_SUFFIX = "/chat/completions"
MODELS_SUFFIX = "/models"
DEFAULT_ROOT = spec.CHAT_PATH.removesuffix(CHAT_SUFFIX)  # /v3/openai
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # an RFC 9110 token

RULE = (f"a base URL with a path is the API root (http://h:8000/v1 -> /v1{CHAT_SUFFIX} and /v1{MODELS_SUFFIX}); "
        f"a bare host means {DEFAULT_ROOT}; a URL ending in {CHAT_SUFFIX} is taken as the chat URL")


class ModelUnknown(ValueError):
    """No --model was given and the endpoint's model list does not name exactly one."""


@dataclass(frozen=True)
class Endpoint:
    """An API root on a server: the origin (scheme://host:port) and the root path (`/v1`)."""

    origin: str
    root: str

    @property
    def chat_path(self) -> str:
        return self.root + CHAT_SUFFIX

    @property
    def models_path(self) -> str:
        return self.root + MODELS_SUFFIX

    @property
    def chat_url(self) -> str:
        return self.origin + self.chat_path

    @property
    def models_url(self) -> str:
        return self.origin + self.models_path


def resolve(base_url: str) -> Endpoint:
    """The endpoint a `--base-url` names (ValueError with a one-line reason when it names none)."""
    parts = urlsplit(base_url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"--base-url must be an http(s) URL such as http://127.0.0.1:8000/v1, got {base_url!r}")
    if parts.query or parts.fragment:
        raise ValueError(f"--base-url must not carry a query or fragment, got {base_url!r}")
    path = parts.path.rstrip("/")
    if path.endswith(CHAT_SUFFIX):
        path = path.removesuffix(CHAT_SUFFIX)
        if not path:  # http://h/chat/completions: the API sits at the host's root
            return Endpoint(origin=f"{parts.scheme}://{parts.netloc}", root="")
    return Endpoint(origin=f"{parts.scheme}://{parts.netloc}", root=path or DEFAULT_ROOT)


def parse_headers(items: list[str] | None) -> dict[str, str]:
    """`['api-key: abc', ...]` -> {'api-key': 'abc'} (ValueError naming the bad item)."""
    headers: dict[str, str] = {}
    for item in items or []:
        name, colon, value = item.partition(":")
        name = name.strip()
        if not colon or not _HEADER_NAME.match(name):
            raise ValueError(f"--header must look like 'Name: value', got {item!r}")
        if "\r" in value or "\n" in value:
            raise ValueError(f"--header {name}: the value must be one line")
        headers[name] = value.strip()
    return headers


def auth_headers(api_key: str | None, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The headers every request carries: the bearer key (when given), then the `--header`s."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    headers.update(extra or {})
    return headers


def served_model(endpoint: Endpoint, headers: dict[str, str], timeout_s: float = 15.0) -> str:
    """The model to test when none was named: the only one `{root}/models` lists.

    ModelUnknown, in one line, when the list cannot be read or holds no model or several.
    """
    request = urllib.request.Request(endpoint.models_url, headers={"Accept": "application/json", **headers})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            data = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raise ModelUnknown(f"no --model given and GET {endpoint.models_url} answered HTTP {exc.code}; "
                         f"pass --model") from None
    except (urllib.error.URLError, OSError) as exc:
        raise ModelUnknown(f"no --model given and GET {endpoint.models_url} failed: {exc}") from None
    except ValueError:
        raise ModelUnknown(f"no --model given and GET {endpoint.models_url} is not JSON; pass --model") from None
    listed = data.get("data") if isinstance(data, dict) else None
    names = [item["id"] for item in listed or [] if isinstance(item, dict) and isinstance(item.get("id"), str)]
    if len(names) != 1:
        shown = ", ".join(names[:5]) + (" ..." if len(names) > 5 else "")
        raise ModelUnknown(f"no --model given and {endpoint.models_url} lists {len(names)} models"
                         f"{': ' + shown if names else ''}; pass --model")
    return names[0]
