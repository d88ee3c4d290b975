"""Tokenizer of a Hugging Face model directory: chat template, token ids, token bytes, end ids.

Used by the exllamav2 engine for everything on the text side, so that side runs (and is tested)
without a GPU: `tokenizers` for ids, the directory's own chat template through jinja, and a
table of each token's raw bytes (what `GeneratedToken.piece` carries).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from reference_server.engines.chat_template import ChatTemplate


@functools.cache
def _unicode_to_byte() -> dict[str, int]:
    """Inverse of GPT-2's bytes_to_unicode: the printable stand-in character of each byte."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    chars = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars, strict=True)}


def _piece_bytes(text: str, byte_level: bool) -> bytes:
    if byte_level:
        table = _unicode_to_byte()
        try:
            return bytes(table[ch] for ch in text)
        except KeyError:  # not a byte-level string (an added token): its text as is
            return text.encode("utf-8")
    if len(text) == 6 and text.startswith("<0x") and text.endswith(">"):  # SentencePiece byte fallback
        return bytes([int(text[3:5], 16)])
    return text.replace("\u2581", " ").encode("utf-8")


def token_pieces(tokenizer_json: dict[str, Any], vocab_size: int | None = None) -> list[bytes]:
    """Raw bytes of every token id; special (control) tokens are empty, as llama.cpp renders them."""
    model = tokenizer_json["model"]
    decoder = json.dumps(tokenizer_json.get("decoder") or {})
    byte_level = '"ByteLevel"' in decoder
    size = max([*model["vocab"].values(), *(t["id"] for t in tokenizer_json.get("added_tokens", []))]) + 1
    pieces = [b""] * max(size, vocab_size or 0)
    for text, token_id in model["vocab"].items():
        pieces[token_id] = _piece_bytes(text, byte_level)
    for added in tokenizer_json.get("added_tokens", []):
        pieces[added["id"]] = b"" if added.get("special") else added["content"].encode("utf-8")
    return pieces


def _token_text(value: Any) -> str:
    if isinstance(value, dict):  # {"content": "<s>", ...} in older tokenizer_config.json files
        return str(value.get("content", ""))
    return str(value or "")


class ModelTokenizer:
    """The text side of an HF model directory (tokenizer.json, tokenizer_config.json, configs)."""

    def __init__(self, model_dir: str | Path) -> None:
        from tokenizers import Tokenizer

        folder = Path(model_dir)
        path = folder / "tokenizer.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing (make one with: python -m reference_server.models --help)")
        tokenizer_json = json.loads(path.read_text(encoding="utf-8"))
        self._tokenizer = Tokenizer.from_str(json.dumps(tokenizer_json))
        tokenizer_config = _read_json(folder / "tokenizer_config.json")
        config = _read_json(folder / "config.json")
        generation = _read_json(folder / "generation_config.json")
        self.vocab_size = int(config.get("vocab_size") or self._tokenizer.get_vocab_size(with_added_tokens=True))
        self.pieces = token_pieces(tokenizer_json, self.vocab_size)
        self.add_bos = bool(tokenizer_config.get("add_bos_token", False))
        self.bos_text = _token_text(tokenizer_config.get("bos_token"))
        self.eos_text = _token_text(tokenizer_config.get("eos_token"))
        self.eos_ids = frozenset(_ids(config.get("eos_token_id")) | _ids(generation.get("eos_token_id")))
        self.context_length = int(config.get("max_position_embeddings") or 2048)
        template = tokenizer_config.get("chat_template")
        if isinstance(template, list):  # [{"name": "default", "template": ...}, ...]
            template = next((t["template"] for t in template if t.get("name") == "default"), None)
        if not template:
            raise ValueError(f"{folder / 'tokenizer_config.json'} has no chat_template")
        self._chat = ChatTemplate(template, bos_text=self.bos_text, eos_text=self.eos_text)

    def render_chat(self, messages: list[dict[str, Any]]) -> str:
        """The chat rendered with the model's own template, ending with the assistant's turn."""
        return self._chat.render(messages)

    def encode(self, text: str) -> list[int]:
        """Token ids of text; special-token texts in it become their ids (as llama.cpp's special=True)."""
        return list(self._tokenizer.encode(text, add_special_tokens=False).ids)

    def tokenize_chat(self, messages: list[dict[str, Any]]) -> list[int]:
        """Prompt tokens for a chat, with a BOS only where the model wants one and the text has none."""
        text = self.render_chat(messages)
        ids = self.encode(text)
        if self.add_bos and self.bos_text and not text.startswith(self.bos_text):
            bos = self._tokenizer.token_to_id(self.bos_text)
            if bos is not None:
                ids.insert(0, bos)
        return ids

    def decode(self, ids: list[int]) -> str:
        """Text of token ids (special tokens dropped)."""
        return b"".join(self.pieces[i] for i in ids).decode("utf-8", errors="replace")


def _ids(value: Any) -> set[int]:
    if value is None:
        return set()
    if isinstance(value, list):
        return {int(v) for v in value}
    return {int(value)}


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
