"""Hugging Face tokenizer files (tokenizer.json and friends) rebuilt from a GGUF's vocabulary.

Only byte-level BPE vocabularies (GGUF `tokenizer.ggml.model == "gpt2"`) are supported, with the
pre-tokenizers llama.cpp calls "gpt2" and "smollm"; anything else is refused rather than
converted into a tokenizer that would silently split text differently from llama.cpp.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# llama.cpp token types (llama_token_type): which ones are parsed as special in text.
TOKEN_TYPE_NORMAL = 1
TOKEN_TYPE_CONTROL = 3
TOKEN_TYPE_USER_DEFINED = 4

# Texts llama.cpp treats as end-of-generation whatever their id (llama-vocab.cpp's EOG list),
# and the fill-in-the-middle pad/repo/separator texts, which it also adds to that list.
EOG_TEXTS = frozenset({
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<end_of_turn>", "<|endoftext|>",
    "<|eom_id|>", "<EOT>", "_<EOT>", "<|end_of_text|>", "<end_of_utterance>",
})
FIM_EOG_TEXTS = (
    frozenset({"<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>"}),
    frozenset({"<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"}),
    frozenset({"<|file_sep|>"}),
)

_BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
PRE_TOKENIZERS: dict[str, dict[str, Any]] = {
    # GPT-2's regex alone.
    "gpt2": _BYTE_LEVEL,
    # llama.cpp's "smollm": every digit on its own first, then GPT-2's regex.
    "smollm": {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True}, _BYTE_LEVEL]},
}


@dataclass(frozen=True)
class GgufVocab:
    """The tokenizer part of a GGUF's metadata."""

    model: str
    pre: str
    tokens: list[str]
    token_types: list[int]
    merges: list[str]
    bos_id: int | None
    eos_id: int | None
    unk_id: int | None
    pad_id: int | None
    eot_id: int | None
    eom_id: int | None
    fim_ids: tuple[int, ...]
    add_bos: bool
    add_eos: bool
    chat_template: str | None

    def eog_ids(self) -> list[int]:
        """Token ids that end generation, by llama.cpp's rule: eos/eot/eom plus the known end texts."""
        ids = {i for i in (self.eos_id, self.eot_id, self.eom_id, *self.fim_ids) if i is not None}
        ids |= {i for i, text in enumerate(self.tokens) if text in EOG_TEXTS}
        if not self.fim_ids:  # no FIM ids in the metadata: llama.cpp finds them by text (first match)
            for texts in FIM_EOG_TEXTS:
                first = next((i for i, text in enumerate(self.tokens) if text in texts), None)
                if first is not None:
                    ids.add(first)
        return sorted(ids)


def _field(reader: Any, key: str, default: Any = None) -> Any:
    field = reader.fields.get(key)
    return default if field is None else field.contents()


def read_vocab(reader: Any) -> GgufVocab:
    """The vocabulary of an open `gguf.GGUFReader`."""
    return GgufVocab(
        model=_field(reader, "tokenizer.ggml.model", ""),
        pre=_field(reader, "tokenizer.ggml.pre", "default"),
        tokens=list(_field(reader, "tokenizer.ggml.tokens", [])),
        token_types=[int(t) for t in _field(reader, "tokenizer.ggml.token_type", [])],
        merges=list(_field(reader, "tokenizer.ggml.merges", [])),
        bos_id=_field(reader, "tokenizer.ggml.bos_token_id"),
        eos_id=_field(reader, "tokenizer.ggml.eos_token_id"),
        unk_id=_field(reader, "tokenizer.ggml.unknown_token_id"),
        pad_id=_field(reader, "tokenizer.ggml.padding_token_id"),
        eot_id=_field(reader, "tokenizer.ggml.eot_token_id"),
        eom_id=_field(reader, "tokenizer.ggml.eom_token_id"),
        fim_ids=tuple(int(v) for key in ("fim_pad", "fim_rep", "fim_sep")
                      if (v := _field(reader, f"tokenizer.ggml.{key}_token_id")) is not None),
        add_bos=bool(_field(reader, "tokenizer.ggml.add_bos_token", False)),
        add_eos=bool(_field(reader, "tokenizer.ggml.add_eos_token", False)),
        chat_template=_field(reader, "tokenizer.chat_template"),
    )


def tokenizer_json(vocab: GgufVocab) -> dict[str, Any]:
    """tokenizer.json for the `tokenizers` library that splits text as llama.cpp does."""
    if vocab.model != "gpt2":
        raise ValueError(f"only byte-level BPE vocabularies (tokenizer.ggml.model 'gpt2') are supported, "
                         f"not {vocab.model!r}")
    if vocab.pre not in PRE_TOKENIZERS:
        raise ValueError(f"pre-tokenizer {vocab.pre!r} is not supported (supported: {sorted(PRE_TOKENIZERS)})")
    added = added_tokens(vocab)
    post: dict[str, Any] = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True}
    if vocab.add_bos or vocab.add_eos:
        single: list[dict[str, Any]] = []
        special: dict[str, Any] = {}
        for flag, token_id in ((vocab.add_bos, vocab.bos_id), (vocab.add_eos, vocab.eos_id)):
            if flag and token_id is not None:
                text = vocab.tokens[token_id]
                special[text] = {"id": text, "ids": [token_id], "tokens": [text]}
        if vocab.add_bos and vocab.bos_id is not None:
            single.append({"SpecialToken": {"id": vocab.tokens[vocab.bos_id], "type_id": 0}})
        single.append({"Sequence": {"id": "A", "type_id": 0}})
        if vocab.add_eos and vocab.eos_id is not None:
            single.append({"SpecialToken": {"id": vocab.tokens[vocab.eos_id], "type_id": 0}})
        post = {"type": "TemplateProcessing", "single": single, "pair": single, "special_tokens": special}
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": PRE_TOKENIZERS[vocab.pre],
        "post_processor": post,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {
            "type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
            "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
            "vocab": {text: i for i, text in enumerate(vocab.tokens)},
            "merges": vocab.merges,
        },
    }


def write_tokenizer_files(vocab: GgufVocab, out_dir: Path, *, max_length: int) -> None:
    """tokenizer.json, tokenizer_config.json (with the chat template), special_tokens_map.json."""
    def text(token_id: int | None) -> str | None:
        return vocab.tokens[token_id] if token_id is not None else None

    specials = {"bos_token": text(vocab.bos_id), "eos_token": text(vocab.eos_id),
                "unk_token": text(vocab.unk_id), "pad_token": text(vocab.pad_id)}
    specials = {k: v for k, v in specials.items() if v is not None}
    config: dict[str, Any] = {
        "add_bos_token": vocab.add_bos,
        "add_eos_token": vocab.add_eos,
        "clean_up_tokenization_spaces": False,
        "model_max_length": max_length,
        "tokenizer_class": "GPT2Tokenizer",
        **specials,
        "added_tokens_decoder": {
            str(entry["id"]): {k: v for k, v in entry.items() if k != "id"}
            for entry in added_tokens(vocab)
        },
    }
    if vocab.chat_template:
        config["chat_template"] = vocab.chat_template
    _write_json(out_dir / "tokenizer.json", tokenizer_json(vocab))
    _write_json(out_dir / "tokenizer_config.json", config)
    _write_json(out_dir / "special_tokens_map.json", specials)


def added_tokens(vocab: GgufVocab) -> list[dict[str, Any]]:
    """The control and user-defined tokens, which text can name directly, as tokenizer.json lists them."""
    return [
        {"id": i, "content": text, "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": False, "special": kind == TOKEN_TYPE_CONTROL}
        for i, (text, kind) in enumerate(zip(vocab.tokens, vocab.token_types, strict=True))
        if kind in (TOKEN_TYPE_CONTROL, TOKEN_TYPE_USER_DEFINED)
    ]


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
