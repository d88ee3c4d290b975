"""When the llama.cpp engine turns flash attention on: by default only on the patched build whose
kernel choice keeps seeded answers the same cached or not, alone or batched."""

from __future__ import annotations

import logging

import pytest

from reference_server.engines.llamacpp import flash_attention_on
from reference_server.llama_build import FA_ROWS_PATCH

PATCHED = frozenset({FA_ROWS_PATCH})


def test_auto_is_on_only_for_the_patched_build(caplog: pytest.LogCaptureFixture) -> None:
    assert flash_attention_on("auto", PATCHED)
    with caplog.at_level(logging.INFO):
        assert not flash_attention_on("auto", frozenset())
    assert FA_ROWS_PATCH in caplog.text and "llama_build.py install" in caplog.text


def test_on_and_off_are_obeyed_and_on_warns_on_a_build_without_the_patch(caplog: pytest.LogCaptureFixture) -> None:
    assert not flash_attention_on("off", PATCHED)
    assert flash_attention_on("on", PATCHED)
    assert "WARNING" not in caplog.text
    with caplog.at_level(logging.WARNING):
        assert flash_attention_on("on", frozenset())
    assert "may give other tokens" in caplog.text
    with pytest.raises(ValueError, match="auto, on or off"):
        flash_attention_on("yes", PATCHED)
