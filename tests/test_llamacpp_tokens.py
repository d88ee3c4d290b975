"""The llama.cpp engine's chat tokenizer gives exactly the tokens of llama.cpp's own call on the
whole text, whatever the text: template stretches kept or not, special tokens anywhere in the
content, text that spells half a special token, long content past what is kept."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

llama_cpp = pytest.importorskip("llama_cpp")

from reference_server.engines import llamacpp_tokens  # noqa: E402
from reference_server.engines.chat_template import ChatTemplate  # noqa: E402
from reference_server.engines.llamacpp_tokens import ChatTokenizer  # noqa: E402

SPECIAL = ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<file_sep>", "<jupyter_code>", "<|im_", "im_end|>", "<"]
WORDS = ["hello", " world", "\n", "  ", "\t", "é", "🙂", "日本語", "system", "user", "assistant", "{", "}", "'s", "123"]


@pytest.fixture(scope="module")
def llama() -> Iterator[Any]:
    from reference_server.engines.llamacpp import default_model_path

    model = llama_cpp.Llama(str(default_model_path()), vocab_only=True, verbose=False)
    yield model
    model.close()


@pytest.fixture(scope="module")
def tokenizer(llama: Any) -> ChatTokenizer:
    return ChatTokenizer(llama._model.vocab)


def llama_tokens(llama: Any, text: str, add_bos: bool) -> list[int]:
    return list(llama.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True))


TEXT = st.lists(st.sampled_from(SPECIAL + WORDS) | st.text(max_size=4), max_size=12).map("".join)


def test_the_embedded_model_takes_the_split_path(tokenizer: ChatTokenizer) -> None:
    assert tokenizer.splits_only  # else every test below would compare llama.cpp with itself


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=TEXT, add_bos=st.booleans())
def test_any_text_gives_llama_cpps_tokens(tokenizer: ChatTokenizer, llama: Any, text: str, add_bos: bool) -> None:
    assert tokenizer.tokenize(text, add_bos) == llama_tokens(llama, text, add_bos)
    assert tokenizer.tokenize(text, add_bos) == llama_tokens(llama, text, add_bos)  # again, from what was kept


MESSAGES = st.lists(
    st.fixed_dictionaries({"role": st.sampled_from(["system", "user", "assistant"]), "content": TEXT}),
    min_size=1, max_size=4,
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(messages=MESSAGES)
def test_rendered_chats_give_llama_cpps_tokens(tokenizer: ChatTokenizer, llama: Any,
                                               messages: list[dict[str, Any]]) -> None:
    template = ChatTemplate(llama.metadata["tokenizer.chat_template"], bos_text="", eos_text="<|im_end|>")
    text = template.render(messages)
    assert tokenizer.tokenize(text, False) == llama_tokens(llama, text, False)


def test_content_longer_than_what_is_kept(tokenizer: ChatTokenizer, llama: Any) -> None:
    long = "<|im_start|>user\n" + "word, and more words " * (llamacpp_tokens.KEPT_CHARS // 10) + "<|im_end|>\n"
    assert tokenizer.tokenize(long, False) == llama_tokens(llama, long, False)


def test_a_vocabulary_it_cannot_split_goes_to_llama_cpp_whole(llama: Any) -> None:
    whole = ChatTokenizer(llama._model.vocab)
    whole.splits_only = False
    text = "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert whole.tokenize(text, True) == llama_tokens(llama, text, True)
