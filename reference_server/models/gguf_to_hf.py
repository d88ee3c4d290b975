"""GGUF (llama architecture) -> Hugging Face directory: config.json, tokenizer files, FP16 safetensors.

Quantized tensors are dequantized with the `gguf` package's numpy code. llama.cpp's converter
permutes the rows of q_proj/k_proj (it stores rotary pairs interleaved, HF stores them as two
halves); `unpermute` undoes that so HF-convention loaders (exllamav2, transformers) get the
original layout back.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from reference_server.models.tokenizer_files import GgufVocab, read_vocab, write_tokenizer_files

_LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_BLOCK = re.compile(r"^blk\.(\d+)\.([a-z_]+)\.weight$")


@dataclass(frozen=True)
class LlamaShape:
    """The hyperparameters config.json needs."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int
    max_position_embeddings: int
    rope_theta: float
    rms_norm_eps: float
    tie_word_embeddings: bool
    head_dim: int | None = None

    @property
    def resolved_head_dim(self) -> int:
        """Per-head width (hidden_size / heads unless set)."""
        return self.head_dim or self.hidden_size // self.num_attention_heads


def hf_config(shape: LlamaShape, vocab: GgufVocab | None = None) -> dict[str, Any]:
    """config.json for a LlamaForCausalLM in FP16."""
    config: dict[str, Any] = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_act": "silu",
        "hidden_size": shape.hidden_size,
        "intermediate_size": shape.intermediate_size,
        "num_hidden_layers": shape.num_hidden_layers,
        "num_attention_heads": shape.num_attention_heads,
        "num_key_value_heads": shape.num_key_value_heads,
        "head_dim": shape.resolved_head_dim,
        "vocab_size": shape.vocab_size,
        "max_position_embeddings": shape.max_position_embeddings,
        "rope_theta": shape.rope_theta,
        "rope_scaling": None,
        "rms_norm_eps": shape.rms_norm_eps,
        "tie_word_embeddings": shape.tie_word_embeddings,
        "attention_bias": False,
        "mlp_bias": False,
        "initializer_range": 0.02,
        "torch_dtype": "float16",
    }
    if vocab is not None:
        config.update(bos_token_id=vocab.bos_id, eos_token_id=vocab.eos_id, pad_token_id=vocab.pad_id)
    return config


def write_model_json(out_dir: Path, shape: LlamaShape, vocab: GgufVocab) -> None:
    """config.json, generation_config.json (every end-of-generation id) and the tokenizer files."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.json").write_text(json.dumps(hf_config(shape, vocab), indent=1) + "\n")
    generation = {"bos_token_id": vocab.bos_id, "eos_token_id": vocab.eog_ids(), "pad_token_id": vocab.pad_id}
    (out_dir / "generation_config.json").write_text(json.dumps(generation, indent=1) + "\n")
    write_tokenizer_files(vocab, out_dir, max_length=shape.max_position_embeddings)


def unpermute(weight: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's q/k row permutation (rotary pairs interleaved -> two halves per head)."""
    rows = weight.shape[0]
    return weight.reshape(n_head, rows // n_head // 2, 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def permute(weight: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's permutation (HF halves -> interleaved pairs); the inverse of `unpermute`."""
    rows = weight.shape[0]
    return weight.reshape(n_head, 2, rows // n_head // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def _meta(reader: Any, key: str, default: Any = None) -> Any:
    field = reader.fields.get(key)
    if field is None:
        if default is None:
            raise ValueError(f"the GGUF has no {key!r}")
        return default
    return field.contents()


def read_shape(reader: Any, vocab: GgufVocab) -> LlamaShape:
    """The model's hyperparameters from GGUF metadata (llama architecture only)."""
    arch = _meta(reader, "general.architecture")
    if arch != "llama":
        raise ValueError(f"only the llama architecture is supported, not {arch!r}")
    heads = int(_meta(reader, "llama.attention.head_count"))
    hidden = int(_meta(reader, "llama.embedding_length"))
    names = {t.name for t in reader.tensors}
    rope_dim = int(_meta(reader, "llama.rope.dimension_count", hidden // heads))
    if rope_dim != hidden // heads:
        raise ValueError(f"partial rotary embeddings ({rope_dim} of {hidden // heads}) are not supported")
    if "rope_freqs.weight" in names:
        raise ValueError("GGUFs with rope_freqs (Llama 3.1-style rope scaling) are not supported")
    return LlamaShape(
        hidden_size=hidden,
        intermediate_size=int(_meta(reader, "llama.feed_forward_length")),
        num_hidden_layers=int(_meta(reader, "llama.block_count")),
        num_attention_heads=heads,
        num_key_value_heads=int(_meta(reader, "llama.attention.head_count_kv", heads)),
        vocab_size=int(_meta(reader, "llama.vocab_size", len(vocab.tokens))),
        max_position_embeddings=int(_meta(reader, "llama.context_length")),
        rope_theta=float(_meta(reader, "llama.rope.freq_base", 10000.0)),
        rms_norm_eps=float(_meta(reader, "llama.attention.layer_norm_rms_epsilon")),
        tie_word_embeddings="output.weight" not in names,
    )


def hf_name(gguf_name: str) -> str:
    """The Hugging Face tensor name of a llama GGUF tensor."""
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    match = _BLOCK.match(gguf_name)
    if match is None or match.group(2) not in _LAYER_NAMES:
        raise ValueError(f"unexpected tensor {gguf_name!r} in a llama GGUF")
    return f"model.layers.{match.group(1)}.{_LAYER_NAMES[match.group(2)]}.weight"


def hf_tensors(reader: Any, shape: LlamaShape) -> dict[str, np.ndarray]:
    """Every tensor dequantized, renamed, q/k unpermuted, as FP16."""
    import gguf

    out: dict[str, np.ndarray] = {}
    for tensor in reader.tensors:
        name = hf_name(tensor.name)
        data = gguf.quants.dequantize(tensor.data, tensor.tensor_type).astype(np.float32, copy=False)
        if name.endswith("q_proj.weight"):
            data = unpermute(data, shape.num_attention_heads)
        elif name.endswith("k_proj.weight"):
            data = unpermute(data, shape.num_key_value_heads)
        out[name] = np.ascontiguousarray(data.astype(np.float16))
    return out


def convert(gguf_path: Path, out_dir: Path) -> dict[str, Any]:
    """Write an HF-format FP16 model directory from a llama GGUF; returns a short summary."""
    import gguf
    from safetensors.numpy import save_file

    started = time.perf_counter()
    reader = gguf.GGUFReader(str(gguf_path))
    vocab = read_vocab(reader)
    shape = read_shape(reader, vocab)
    write_model_json(out_dir, shape, vocab)
    tensors = hf_tensors(reader, shape)
    save_file(tensors, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    return {
        "source": str(gguf_path),
        "out_dir": str(out_dir),
        "tensors": len(tensors),
        "parameters": int(sum(t.size for t in tensors.values())),
        "seconds": round(time.perf_counter() - started, 2),
    }
