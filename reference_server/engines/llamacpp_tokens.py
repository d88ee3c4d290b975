"""Prompt tokens of a rendered chat, with the template's fixed text tokenized once.

Why: llama.cpp tokenizes a chat in 0.3 ms here (0.8 ms while the server runs), all of it before
the prompt can start (time to first token), and most of that is text every request repeats: the
default system prompt and the template's role headers. llama.cpp itself first splits the text at
every special token (`<|im_start|>`, `<|im_end|>`...) and tokenizes each stretch of text between
them on its own, so those stretches can be tokenized once and kept. This does the same split, keeps
the tokens of short stretches, and asks llama.cpp only for what it has not seen.

Only where that split is all llama.cpp does with special tokens: a BPE vocabulary whose special
tokens neither strip the spaces beside them nor must stand as a word, and that adds no
end-of-sequence token. Any other vocabulary goes to llama.cpp's own call, whole.
tests/test_llamacpp_tokens.py holds both to the same tokens for every chat it tries.
"""

from __future__ import annotations

import functools
from typing import Any

import llama_cpp

# Tokens llama.cpp splits the text at before tokenizing (its "special tokens cache").
_SPLIT_AT = (llama_cpp.LLAMA_TOKEN_ATTR_CONTROL | llama_cpp.LLAMA_TOKEN_ATTR_USER_DEFINED
             | llama_cpp.LLAMA_TOKEN_ATTR_UNKNOWN)
# Attributes that make llama.cpp do more than split there.
_MORE_THAN_A_SPLIT = (llama_cpp.LLAMA_TOKEN_ATTR_LSTRIP | llama_cpp.LLAMA_TOKEN_ATTR_RSTRIP
                      | llama_cpp.LLAMA_TOKEN_ATTR_SINGLE_WORD)
KEPT_CHARS = 2048  # stretches up to this long keep their tokens (template text); longer ones are content
KEPT_STRETCHES = 4096


class ChatTokenizer:
    """`tokenize(text, add_bos)`: what llama_tokenize(text, add_special=add_bos, parse_special=True) gives."""

    def __init__(self, vocab: Any) -> None:
        self._vocab = vocab
        special: list[tuple[str, int]] = []
        self.splits_only = (llama_cpp.llama_vocab_type(vocab) == llama_cpp.LLAMA_VOCAB_TYPE_BPE
                            and not llama_cpp.llama_vocab_get_add_eos(vocab))
        for token in range(llama_cpp.llama_vocab_n_tokens(vocab)):
            attr = llama_cpp.llama_vocab_get_attr(vocab, token)
            if not attr & _SPLIT_AT:
                continue
            if attr & _MORE_THAN_A_SPLIT:
                self.splits_only = False
            try:
                text = llama_cpp.llama_vocab_get_text(vocab, token).decode("utf-8")
            except UnicodeDecodeError:  # not text: it could only be matched in bytes
                self.splits_only = False
                continue
            if text:
                special.append((text, token))
        special.sort(key=lambda item: len(item[0]), reverse=True)  # llama.cpp tries the longest first
        self._special = tuple(special)
        self._bos = llama_cpp.llama_vocab_bos(vocab)
        self._kept = functools.lru_cache(maxsize=KEPT_STRETCHES)(self._plain)

    def tokenize(self, text: str, add_bos: bool) -> list[int]:
        if not self.splits_only:
            return self._llama_tokenize(text.encode("utf-8"), add_special=add_bos, parse_special=True)
        tokens = [self._bos] if add_bos and llama_cpp.llama_vocab_get_add_bos(self._vocab) else []
        for part in self._split(text):
            if isinstance(part, int):
                tokens.append(part)
            else:
                tokens.extend(self._kept(part) if len(part) <= KEPT_CHARS else self._plain(part))
        return tokens

    def _split(self, text: str) -> list[str | int]:
        """The text as stretches and special token ids, split as llama.cpp splits it: at every
        special token's text, the longest tokens first."""
        parts: list[str | int] = [text]
        for special, token in self._special:
            if not any(isinstance(part, str) and special in part for part in parts):
                continue
            split: list[str | int] = []
            for part in parts:
                if isinstance(part, int) or special not in part:
                    split.append(part)
                    continue
                for i, stretch in enumerate(part.split(special)):
                    if i:
                        split.append(token)
                    if stretch:
                        split.append(stretch)
            parts = split
        return parts

    def _plain(self, stretch: str) -> tuple[int, ...]:
        return tuple(self._llama_tokenize(stretch.encode("utf-8"), add_special=False, parse_special=False))

    def _llama_tokenize(self, data: bytes, *, add_special: bool, parse_special: bool) -> list[int]:
        room = len(data) + 2  # never more tokens than bytes, plus BOS and EOS
        buffer = (llama_cpp.llama_token * room)()
        count = llama_cpp.llama_tokenize(self._vocab, data, len(data), buffer, room, add_special, parse_special)
        if count < 0:  # cannot happen with that room; asked again with what llama.cpp says it needs
            room = -count
            buffer = (llama_cpp.llama_token * room)()
            count = llama_cpp.llama_tokenize(self._vocab, data, len(data), buffer, room, add_special, parse_special)
        return list(buffer[:count])
