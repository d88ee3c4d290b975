"""GGUF -> Hugging Face conversion of the embedded SmolLM2, checked against llama.cpp on the CPU.

The tokenizer must give llama.cpp's ids (chat template text included) and llama.cpp's bytes per
token; the converted FP16 weights, run by a plain numpy Llama in the HF convention, must give
llama.cpp's logits within quantization noise (which also proves the q/k permutation was undone).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("gguf")
pytest.importorskip("safetensors")
pytest.importorskip("tokenizers")

import llama_cpp  # noqa: E402
from numpy_llama import NumpyLlama  # noqa: E402
from safetensors.numpy import load_file  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402

from reference_server.engines.hf_tokenizer import ModelTokenizer  # noqa: E402
from reference_server.engines.llamacpp import LlamaCppEngine, default_model_path  # noqa: E402
from reference_server.models.gguf_to_hf import convert, permute, unpermute  # noqa: E402

TEXTS = [
    "Hello world",
    "<|im_start|>user\nWhat is 12345 + 678?<|im_end|>\n<|im_start|>assistant\n",
    "  multiple   spaces\n\n\ttabs and a trailing space ",
    "café über 日本語 🙂 naïve Ünïcödé",
    "don't I'll we've THEY'RE",
    "x=1;y=22\r\nprint(f'{x:>08.3f}')",
    "<|endoftext|>text<repo_name>more<|im_end|>",
    "",
]
CHATS = [
    [{"role": "user", "content": "Tell me a story."}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
     {"role": "assistant", "content": "4"}, {"role": "user", "content": "and 3+3?"}],
    [{"role": "user", "content": [{"type": "text", "text": "part one, "}, {"type": "text", "text": "part two"}]}],
]


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("smollm2-hf")
    summary = convert(default_model_path(), out)
    assert summary["tensors"] == 272
    return out


@pytest.fixture(scope="module")
def llama() -> Iterator[LlamaCppEngine]:
    engine = LlamaCppEngine(n_ctx=512, n_threads=2)
    yield engine
    engine.close()


def test_config_matches_the_gguf(converted: Path) -> None:
    config = json.loads((converted / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    expected = {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
                "num_key_value_heads": 3, "head_dim": 64, "vocab_size": 49152, "max_position_embeddings": 8192,
                "rope_theta": 100000.0, "tie_word_embeddings": True, "torch_dtype": "float16"}
    assert {k: config[k] for k in expected} == expected
    assert config["rms_norm_eps"] == pytest.approx(1e-5)
    assert (config["bos_token_id"], config["eos_token_id"]) == (1, 2)


def test_tensors_are_fp16_with_hf_names_and_shapes(converted: Path) -> None:
    tensors = load_file(str(converted / "model.safetensors"))
    assert len(tensors) == 2 + 30 * 9
    assert all(t.dtype == np.float16 for t in tensors.values())
    assert "lm_head.weight" not in tensors  # tied to the embeddings
    assert tensors["model.embed_tokens.weight"].shape == (49152, 576)
    layer = {name.split("layers.0.")[1]: t.shape for name, t in tensors.items() if ".layers.0." in name}
    assert layer == {
        "input_layernorm.weight": (576,), "post_attention_layernorm.weight": (576,),
        "self_attn.q_proj.weight": (576, 576), "self_attn.k_proj.weight": (192, 576),
        "self_attn.v_proj.weight": (192, 576), "self_attn.o_proj.weight": (576, 576),
        "mlp.gate_proj.weight": (1536, 576), "mlp.up_proj.weight": (1536, 576), "mlp.down_proj.weight": (576, 1536),
    }
    assert all(np.isfinite(t.astype(np.float32)).all() for t in tensors.values())


def test_unpermute_inverts_llama_cpp_permutation() -> None:
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((3 * 64, 40)).astype(np.float32)
    assert np.array_equal(unpermute(permute(weight, 3), 3), weight)
    assert not np.array_equal(permute(weight, 3), weight)
    # Within a head, llama.cpp interleaves the two halves: row 2i <- i, row 2i+1 <- i + 32.
    permuted = permute(weight, 3)
    assert np.array_equal(permuted[0], weight[0]) and np.array_equal(permuted[1], weight[32])


def test_tokenizer_encodes_like_llama_cpp(converted: Path, llama: LlamaCppEngine) -> None:
    tokenizer = Tokenizer.from_file(str(converted / "tokenizer.json"))
    for text in TEXTS:
        ours = tokenizer.encode(text, add_special_tokens=True).ids
        theirs = llama._llama.tokenize(text.encode("utf-8"), add_bos=False, special=True)
        assert ours == theirs, text


def test_chat_prompt_tokens_match_llama_cpp(converted: Path, llama: LlamaCppEngine) -> None:
    tokenizer = ModelTokenizer(converted)
    for chat in CHATS:
        assert tokenizer.render_chat(chat) == llama.render_chat(chat)
        assert tokenizer.tokenize_chat(chat) == llama.tokenize_chat(chat)


def test_token_bytes_and_end_tokens_match_llama_cpp(converted: Path, llama: LlamaCppEngine) -> None:
    tokenizer = ModelTokenizer(converted)
    assert len(tokenizer.pieces) == llama.vocab_size
    mismatched = [i for i in range(llama.vocab_size) if tokenizer.pieces[i] != llama.piece(i)]
    assert mismatched == []
    assert tokenizer.eos_ids == llama._eog
    generation = json.loads((converted / "generation_config.json").read_text())
    assert sorted(generation["eos_token_id"]) == sorted(llama._eog)


def _llama_cpp_logits(tokens: list[int]) -> np.ndarray:
    model = llama_cpp.Llama(str(default_model_path()), n_ctx=256, logits_all=True, verbose=False,
                            n_threads=2, n_threads_batch=2)
    try:
        model.eval(tokens)
        return np.array(model.scores[: len(tokens)], dtype=np.float32)
    finally:
        model.close()


def test_converted_weights_give_llama_cpp_logits(converted: Path, llama: LlamaCppEngine) -> None:
    tokens = llama.tokenize_chat(CHATS[1])
    reference = _llama_cpp_logits(tokens)
    model = NumpyLlama(converted)
    ours = model.logits(tokens)
    # llama.cpp multiplies Q4_1 weights with Q8-quantized activations; the FP16 weights see the
    # same values without that rounding: close, not equal.
    correlation = [np.corrcoef(ours[i], reference[i])[0, 1] for i in range(len(tokens))]
    assert min(correlation) > 0.995, correlation
    assert (ours.argmax(-1) == reference.argmax(-1)).mean() >= 0.85
    assert np.abs(ours - reference).max() < 0.5 * reference.std() + 1.0

    # The check has teeth: leave q/k in llama.cpp's layout and the logits drift well away.
    for name, weight in model.w.items():
        if name.endswith("q_proj.weight"):
            model.w[name] = permute(weight, 9)
        elif name.endswith("k_proj.weight"):
            model.w[name] = permute(weight, 3)
    wrong = model.logits(tokens)
    assert min(np.corrcoef(wrong[i], reference[i])[0, 1] for i in range(1, len(tokens))) < 0.99


def test_cli_help_and_errors(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "reference_server.models", "--help"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "convert-gguf" in done.stdout and "random" in done.stdout
    done = subprocess.run([sys.executable, "-m", "reference_server.models", "convert-gguf", str(tmp_path / "x"),
                           "--gguf", str(tmp_path / "missing.gguf")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.startswith("error:") and "Traceback" not in done.stderr
