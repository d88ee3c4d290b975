"""Shared pytest hooks and fixtures: tests marked `gpu` are skipped unless PyTorch sees a CUDA
device; `model_dir` is SmolLM2's config and tokenizer files for the exllamav2 tests."""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import pytest


@functools.cache
def cuda_available() -> bool:
    """Whether a CUDA GPU is usable here (torch imported only if installed)."""
    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return bool(torch.cuda.is_available())


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    gpu_items = [item for item in items if item.get_closest_marker("gpu") is not None]
    if gpu_items and not cuda_available():
        skip = pytest.mark.skip(reason="needs a CUDA GPU (PyTorch sees none)")
        for item in gpu_items:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmolLM2's config and tokenizer files, from the embedded GGUF (no weights: fakes need none)."""
    gguf = pytest.importorskip("gguf")
    from reference_server.engines.llamacpp import default_model_path
    from reference_server.models.gguf_to_hf import read_shape, write_model_json
    from reference_server.models.tokenizer_files import read_vocab

    reader = gguf.GGUFReader(str(default_model_path()))
    vocab = read_vocab(reader)
    out = tmp_path_factory.mktemp("smollm2-text")
    write_model_json(out, read_shape(reader, vocab), vocab)
    return out
