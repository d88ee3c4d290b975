"""A plain numpy Llama forward pass over an HF-format directory (test helper, no torch).

It follows the Hugging Face convention (rotate_half rotary embeddings on q/k rows laid out as two
halves per head), so logits that match llama.cpp's prove the conversion undid llama.cpp's permutation.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


class NumpyLlama:
    """Float32 forward of a LlamaForCausalLM; whole prompt at once, no KV cache."""

    def __init__(self, model_dir: Path) -> None:
        from safetensors.numpy import load_file

        self.config = json.loads((Path(model_dir) / "config.json").read_text())
        self.w = {k: v.astype(np.float32) for k, v in load_file(str(Path(model_dir) / "model.safetensors")).items()}

    def _rms(self, x: np.ndarray, weight: np.ndarray) -> np.ndarray:
        eps = self.config["rms_norm_eps"]
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * weight

    def logits(self, tokens: list[int]) -> np.ndarray:
        """Logits at every position, shape (len(tokens), vocab)."""
        c = self.config
        n_head, n_kv = c["num_attention_heads"], c["num_key_value_heads"]
        head_dim = c.get("head_dim") or c["hidden_size"] // n_head
        n = len(tokens)
        x = self.w["model.embed_tokens.weight"][tokens]
        inv = 1.0 / (c["rope_theta"] ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
        angles = np.outer(np.arange(n), inv)
        cos = np.concatenate([np.cos(angles)] * 2, axis=-1).astype(np.float32)
        sin = np.concatenate([np.sin(angles)] * 2, axis=-1).astype(np.float32)

        def rope(t: np.ndarray) -> np.ndarray:  # t: (heads, n, head_dim)
            half = head_dim // 2
            rotated = np.concatenate([-t[..., half:], t[..., :half]], axis=-1)
            return t * cos + rotated * sin

        mask = np.triu(np.full((n, n), -np.inf, dtype=np.float32), 1)
        for i in range(c["num_hidden_layers"]):
            p = f"model.layers.{i}."
            h = self._rms(x, self.w[p + "input_layernorm.weight"])
            q = (h @ self.w[p + "self_attn.q_proj.weight"].T).reshape(n, n_head, head_dim).transpose(1, 0, 2)
            k = (h @ self.w[p + "self_attn.k_proj.weight"].T).reshape(n, n_kv, head_dim).transpose(1, 0, 2)
            v = (h @ self.w[p + "self_attn.v_proj.weight"].T).reshape(n, n_kv, head_dim).transpose(1, 0, 2)
            q, k = rope(q), rope(k)
            k = np.repeat(k, n_head // n_kv, axis=0)
            v = np.repeat(v, n_head // n_kv, axis=0)
            scores = q @ k.transpose(0, 2, 1) / np.sqrt(head_dim) + mask
            scores = np.exp(scores - scores.max(-1, keepdims=True))
            scores /= scores.sum(-1, keepdims=True)
            attn = (scores @ v).transpose(1, 0, 2).reshape(n, n_head * head_dim)
            x = x + attn @ self.w[p + "self_attn.o_proj.weight"].T
            h = self._rms(x, self.w[p + "post_attention_layernorm.weight"])
            gate = h @ self.w[p + "mlp.gate_proj.weight"].T
            up = h @ self.w[p + "mlp.up_proj.weight"].T
            x = x + ((gate / (1.0 + np.exp(-gate))) * up) @ self.w[p + "mlp.down_proj.weight"].T
        x = self._rms(x, self.w["model.norm.weight"])
        head = self.w.get("lm_head.weight", self.w["model.embed_tokens.weight"])
        return x @ head.T
