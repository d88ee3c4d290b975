"""A model's own Jinja chat template, rendered the way Hugging Face's `apply_chat_template` does.

One implementation for every engine, so the llama.cpp engine (template from GGUF metadata) and the
exllamav2 engine (template from tokenizer_config.json) turn the same messages into the same text.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment


def message_text(content: Any) -> str:
    """A message's content as text: a string as is, the text parts of a content-part list joined."""
    if content is None:
        return ""
    if isinstance(content, list):
        return "".join(
            part.get("text", "") for part in content if isinstance(part, dict) and part.get("type", "text") == "text"
        )
    return str(content)


def _raise_exception(message: str) -> None:
    raise ValueError(message)


class ChatTemplate:
    """A compiled chat template (sandboxed: templates come with model files) and its BOS/EOS texts."""

    def __init__(self, template: str, *, bos_text: str, eos_text: str) -> None:
        env = ImmutableSandboxedEnvironment(
            loader=jinja2.BaseLoader(), trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols]
        )
        env.filters["tojson"] = lambda x, indent=None: json.dumps(x, ensure_ascii=False, indent=indent)
        self._template = env.from_string(template)
        self.bos_text = bos_text
        self.eos_text = eos_text

    def render(self, messages: list[dict[str, Any]]) -> str:
        """The chat rendered with the model's own template, ending with the assistant's turn."""
        flat = [{**m, "content": message_text(m.get("content"))} for m in messages]
        return self._template.render(
            messages=flat,
            add_generation_prompt=True,
            bos_token=self.bos_text,
            eos_token=self.eos_text,
            raise_exception=_raise_exception,
            strftime_now=lambda fmt: datetime.now().strftime(fmt),
        )
