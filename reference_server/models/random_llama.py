"""Random-weight Llama-shaped models with SmolLM2's tokenizer, for throughput work on the GPU.

The weights are noise (normal, std 0.02; norms 1), so the text is gibberish, but every tensor has
the shape and dtype of a real model: the GPU does exactly the work it would for real weights.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from reference_server.models.gguf_to_hf import LlamaShape, write_model_json
from reference_server.models.tokenizer_files import read_vocab

SMOLLM2_VOCAB = 49152

SHAPES: dict[str, LlamaShape] = {
    # Llama-3.2-1B's dimensions (16 layers, 2048 wide, 32 query / 8 KV heads, 8192 MLP, tied
    # embeddings) with SmolLM2's 49152-token vocabulary instead of 128256; no rope scaling.
    "1b": LlamaShape(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                     num_key_value_heads=8, vocab_size=SMOLLM2_VOCAB, max_position_embeddings=8192,
                     rope_theta=500000.0, rms_norm_eps=1e-5, tie_word_embeddings=True),
    # For tests: two small layers, head_dim 64 like the real models.
    "tiny": LlamaShape(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, vocab_size=SMOLLM2_VOCAB, max_position_embeddings=2048,
                       rope_theta=10000.0, rms_norm_eps=1e-5, tie_word_embeddings=True),
}


def tensor_shapes(shape: LlamaShape) -> dict[str, tuple[int, ...]]:
    """Every tensor of a LlamaForCausalLM with these dimensions, by HF name."""
    d, f, v = shape.hidden_size, shape.intermediate_size, shape.vocab_size
    q = shape.num_attention_heads * shape.resolved_head_dim
    kv = shape.num_key_value_heads * shape.resolved_head_dim
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (v, d), "model.norm.weight": (d,)}
    for i in range(shape.num_hidden_layers):
        p = f"model.layers.{i}."
        shapes.update({
            p + "input_layernorm.weight": (d,),
            p + "self_attn.q_proj.weight": (q, d),
            p + "self_attn.k_proj.weight": (kv, d),
            p + "self_attn.v_proj.weight": (kv, d),
            p + "self_attn.o_proj.weight": (d, q),
            p + "post_attention_layernorm.weight": (d,),
            p + "mlp.gate_proj.weight": (f, d),
            p + "mlp.up_proj.weight": (f, d),
            p + "mlp.down_proj.weight": (d, f),
        })
    if not shape.tie_word_embeddings:
        shapes["lm_head.weight"] = (v, d)
    return shapes


def make_random(shape_name: str, out_dir: Path, gguf_path: Path, *, seed: int = 0) -> dict[str, Any]:
    """Write a random-weight FP16 model directory; the tokenizer comes from `gguf_path`."""
    import gguf
    from safetensors.numpy import save_file

    if shape_name not in SHAPES:
        raise ValueError(f"unknown shape {shape_name!r} (known: {sorted(SHAPES)})")
    started = time.perf_counter()
    shape = SHAPES[shape_name]
    vocab = read_vocab(gguf.GGUFReader(str(gguf_path)))
    if len(vocab.tokens) != shape.vocab_size:
        raise ValueError(f"the tokenizer has {len(vocab.tokens)} tokens, the shape expects {shape.vocab_size}")
    write_model_json(out_dir, shape, vocab)
    rng = np.random.default_rng(seed)
    tensors: dict[str, np.ndarray] = {}
    for name, dims in tensor_shapes(shape).items():
        if len(dims) == 1:
            tensors[name] = np.ones(dims, dtype=np.float16)
        else:
            values = rng.standard_normal(dims, dtype=np.float32)
            values *= 0.02
            tensors[name] = values.astype(np.float16)
    save_file(tensors, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    return {
        "shape": shape_name,
        "out_dir": str(out_dir),
        "tensors": len(tensors),
        "parameters": int(sum(t.size for t in tensors.values())),
        "seconds": round(time.perf_counter() - started, 2),
    }
