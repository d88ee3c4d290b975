"""Random-weight Llama models: the tiny shape written and run for real, the 1b shape's arithmetic."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("gguf")
pytest.importorskip("safetensors")

from numpy_llama import NumpyLlama  # noqa: E402
from safetensors.numpy import load_file  # noqa: E402

from reference_server.engines.hf_tokenizer import ModelTokenizer  # noqa: E402
from reference_server.engines.llamacpp import default_model_path  # noqa: E402
from reference_server.models.__main__ import main  # noqa: E402
from reference_server.models.random_llama import SHAPES, make_random, tensor_shapes  # noqa: E402


def test_1b_shape_is_llama_3_2_1b_with_smollm2_vocab() -> None:
    shape = SHAPES["1b"]
    params = sum(int(np.prod(dims)) for dims in tensor_shapes(shape).values())
    # Llama-3.2-1B has 1,235,814,400 parameters with its 128256-token (tied) embedding; SmolLM2's
    # 49152 tokens take (128256 - 49152) * 2048 off it.
    assert params == 1_235_814_400 - (128256 - 49152) * 2048
    assert (shape.num_hidden_layers, shape.hidden_size, shape.intermediate_size) == (16, 2048, 8192)
    assert (shape.num_attention_heads, shape.num_key_value_heads, shape.resolved_head_dim) == (32, 8, 64)


def test_tiny_model_is_written_and_runs(tmp_path: Path) -> None:
    summary = make_random("tiny", tmp_path, default_model_path(), seed=3)
    tensors = load_file(str(tmp_path / "model.safetensors"))
    assert summary["tensors"] == len(tensors) == 2 + 2 * 9
    expected = tensor_shapes(SHAPES["tiny"])
    assert {name: t.shape for name, t in tensors.items()} == expected
    assert all(t.dtype == np.float16 for t in tensors.values())
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["hidden_size"] == 256 and config["num_hidden_layers"] == 2 and config["vocab_size"] == 49152
    tokenizer = ModelTokenizer(tmp_path)
    tokens = tokenizer.tokenize_chat([{"role": "user", "content": "hi"}])
    logits = NumpyLlama(tmp_path).logits(tokens)
    assert logits.shape == (len(tokens), 49152) and np.isfinite(logits).all()


def test_same_seed_same_weights(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(["random", "--shape", "tiny", "--seed", "7", str(a)]) == 0
    assert main(["random", "--shape", "tiny", "--seed", "7", str(b)]) == 0
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
