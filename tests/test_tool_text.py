"""Tool calls made from schema-constrained text (reference_server/tool_text.py): the schema a call
follows, and the parser that streams a call's name and arguments out of the generated text."""

from __future__ import annotations

import json

import jsonschema
import pytest

from reference_server.tool_text import (
    ArgumentsPiece,
    CallParser,
    CallStart,
    FunctionTool,
    call_schema,
    history_for_template,
    tools_prompt,
)

WEATHER = FunctionTool("get_weather", {"type": "object", "properties": {"city": {"type": "string"}},
                                       "required": ["city"]})
SEARCH = FunctionTool("search", {"type": "object", "properties": {"q": {"type": "string"}}})


def feed_all(parser: CallParser, pieces: list[str]) -> list:
    events = [event for piece in pieces for event in parser.feed(piece)]
    return events


def test_the_schema_takes_a_call_to_any_tool_and_nothing_else():
    schema = call_schema([WEATHER, SEARCH])
    jsonschema.validate({"name": "search", "parameters": {"q": "x"}}, schema)
    jsonschema.validate({"name": "get_weather", "parameters": {"city": "Oslo"}}, schema)
    for bad in ({"name": "get_weather", "parameters": {}}, {"name": "other", "parameters": {}},
                {"name": "search", "parameters": {}, "extra": 1}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)
    assert call_schema([WEATHER])["properties"]["name"] == {"const": "get_weather"}


@pytest.mark.parametrize("split", [1, 2, 3, 7, 1000])
def test_a_forced_call_streams_its_name_then_its_arguments_however_the_text_is_cut(split):
    text = '{ "name": "get_weather", "parameters": { "city": "Oslo \\"}{\\" [x]" } } '
    pieces = [text[i:i + split] for i in range(0, len(text), split)]
    parser = CallParser()
    events = feed_all(parser, pieces)
    assert events[0] == CallStart("get_weather")
    assert all(isinstance(e, ArgumentsPiece) for e in events[1:])
    arguments = "".join(e.text for e in events[1:])
    assert json.loads(arguments) == {"city": 'Oslo "}{" [x]'} and arguments == parser.arguments
    assert parser.complete and parser.name == "get_weather"


def test_a_call_cut_short_is_not_complete():
    parser = CallParser()
    events = feed_all(parser, ['{"name":"search","parameters":{"q":"unfin'])
    assert events[0] == CallStart("search") and not parser.complete
    assert parser.arguments == '{"q":"unfin'


def test_the_history_of_a_tool_turn_renders_as_plain_chat():
    messages = [{"role": "user", "content": "weather?"},
                {"role": "assistant", "content": None, "tool_calls": [
                    {"id": "call_1", "type": "function",
                     "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": "12 C"}]
    plain = history_for_template(messages)
    assert [m["role"] for m in plain] == ["user", "assistant", "user"]
    assert json.loads(plain[1]["content"]) == {"name": "get_weather", "parameters": {"city": "Oslo"}}
    assert plain[2]["content"] == "Result of call call_1: 12 C"
    assert "get_weather" in tools_prompt([WEATHER]) and '"required": ["city"]' in tools_prompt([WEATHER])


def test_the_llama_cpp_grammar_writes_the_name_before_the_parameters():
    pytest.importorskip("llama_cpp")
    from reference_server.engines.llamacpp import _grammar_text

    grammar = _grammar_text(json.dumps(call_schema([WEATHER, SEARCH]), sort_keys=True))
    rule = next(line for line in grammar.splitlines() if line.startswith("alternative-0 ::="))
    assert rule.index("name-kv") < rule.index("parameters-kv")
