"""Unit tests of the load workloads (load/workloads, load/lengths, load/workload_metrics): what each
plans, how it travels to workers, and how asked-against-served and prefix sharing are computed."""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import pytest

from load.lengths import LengthSpecError, fixed_length, parse_length
from load.metrics import Window
from load.prompts import DatasetError, TokenScale, fit_token_scale
from load.records import RequestRecord
from load.workload_metrics import length_comparison, prefix_sharing, workload_metrics
from load.workloads import from_wire
from load.workloads.base import request_body
from load.workloads.build import WorkloadError, add_workload_arguments, build_workload
from load.workloads.dataset import DatasetWorkload
from load.workloads.multi_turn import MultiTurnWorkload
from load.workloads.shared_prefix import SharedPrefixWorkload
from load.workloads.sharegpt import ShareGPTWorkload, count_lengths, read_sharegpt
from load.workloads.synthetic import SyntheticWorkload
from load.workloads.tools import SAMPLE_TOOLS, ToolsWorkload
from load.workloads.trace import TraceWorkload, read_trace

DATA = Path(__file__).resolve().parent / "data"
ONE_PER_WORD = TokenScale(overhead=6, per_word=1.0)  # the mock engine: one token a word, 6 of template


def words_counter(messages: list[dict]) -> int:
    """A stand-in endpoint that counts like the mock engine: a token per word, 2 per message, 1 more."""
    return sum(len(str(m["content"]).split()) + 2 for m in messages) + 1


class TestLengths:
    @pytest.mark.parametrize(("spec", "low", "high"), [
        ("7", 7, 7), ("uniform:3,9", 3, 9), ("normal:50,10", 1, 90), ("normal:50,40,20,60", 20, 60)])
    def test_draws_stay_within_the_spec(self, spec, low, high):
        length = parse_length(spec)
        draws = [length.draw(random.Random(i)) for i in range(500)]
        assert length.bounds == (low, high) and low <= min(draws) and max(draws) <= high
        if length.kind in ("uniform", "normal"):
            assert len(set(draws)) > 3

    def test_normal_is_clipped_not_redrawn(self):
        draws = [parse_length("normal:10,50,5,15").draw(random.Random(i)) for i in range(400)]
        assert draws.count(5) > 50 and draws.count(15) > 50  # the tails pile up on the bounds

    def test_empirical_draws_only_the_file_values(self, tmp_path):
        path = tmp_path / "lengths.txt"
        path.write_text("12 40\n40,7\n")
        length = parse_length(f"file:{path}")
        assert {length.draw(random.Random(i)) for i in range(200)} == {7, 12, 40}
        (tmp_path / "l.json").write_text("[3, 4]")
        assert parse_length(f"file:{tmp_path / 'l.json'}").values == (3, 4)

    @pytest.mark.parametrize("spec", ["0", "2.5", "uniform:5,2", "uniform:1", "normal:10,-1", "gauss:1,2", "x",
                                      "file:/nonexistent/lengths"])
    def test_bad_specs_name_themselves(self, spec):
        with pytest.raises(LengthSpecError):
            parse_length(spec)

    def test_the_wire_form_keeps_the_distribution(self):
        for spec in ("9", "uniform:2,4", "normal:5,1,2,8"):
            length = parse_length(spec)
            assert type(length).from_wire(json.loads(json.dumps(length.to_wire()))) == length


def test_token_scale_is_the_line_through_two_counts():
    scale = fit_token_scale(lambda words: 17 + 2 * words)
    assert scale == TokenScale(17.0, 2.0) and scale.words(217) == 100 and scale.text_words(10) == 5


class TestSharedPrefix:
    def test_a_group_shares_its_system_prompt_and_nothing_else(self):
        workload = SharedPrefixWorkload(groups=2, prefix_tokens=30, suffix_tokens=fixed_length(10),
                                        output_tokens=fixed_length(4), scale=ONE_PER_WORD)
        session = workload.session(random.Random(0))
        requests = [session.next_request(None) for _ in range(40)]
        by_group: dict[str, set[str]] = {}
        for request in requests:
            (block_id, tokens), = request.prefix_blocks
            assert tokens == 30 and request.requested_prompt_tokens == 40 and request.max_tokens == 4
            assert len(request.messages[0]["content"].split()) == 30
            by_group.setdefault(block_id, set()).add(request.messages[0]["content"])
        assert len(by_group) == 2 and all(len(texts) == 1 for texts in by_group.values())
        assert len({r.messages[1]["content"] for r in requests}) == 40  # every suffix its own


class TestMultiTurn:
    def test_each_turn_carries_the_history_and_the_last_answer(self):
        workload = MultiTurnWorkload(turns=3, think_s=0.5, output_tokens=fixed_length(5), words=4)
        session = workload.session(random.Random(1))
        assert session.wait_s() == 0
        first = session.next_request(None)
        assert first.turn == 1 and [m["role"] for m in first.messages] == ["user"]
        session.answered("first answer")
        assert session.wait_s() == 0.5 and session.wait_s() == 0  # thinks once, before the next turn
        second = session.next_request(None)
        assert second.turn == 2 and second.messages[:2] == [first.messages[0],
                                                             {"role": "assistant", "content": "first answer"}]
        session.answered("second")
        assert session.wait_s() == 0.5
        third = session.next_request(None)
        assert third.turn == 3 and len(third.messages) == 5
        session.answered("third")
        assert session.wait_s() == 0  # the conversation is over: a new one starts at once
        assert session.next_request(None).turn == 1

    def test_a_failed_turn_ends_the_conversation(self):
        session = MultiTurnWorkload(turns=5, think_s=1.0, output_tokens=fixed_length(5)).session(random.Random(0))
        session.next_request(None)
        session.answered(None)
        request = session.next_request(None)
        assert request.turn == 1 and len(request.messages) == 1 and session.wait_s() == 0


class TestShareGPT:
    def test_reads_the_first_answered_human_turn_and_skips_the_rest(self):
        pairs = read_sharegpt(DATA / "sharegpt_sample.json")
        assert [p["prompt"] for p in pairs][:2] == ["What is the capital of France?", "Write a haiku about the sea."]
        assert len(pairs) == 4  # the unanswered conversation is skipped
        assert len(read_sharegpt(DATA / "sharegpt_sample.json", limit=2)) == 2

    def test_jsonl_and_bad_files(self, tmp_path):
        good = tmp_path / "c.jsonl"
        good.write_text('{"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]}\n')
        assert read_sharegpt(good) == [{"prompt": "hi", "answer": "yo"}]
        for text in ('[{"messages": []}]', "[]", "{oops"):
            bad = tmp_path / "bad.json"
            bad.write_text(text)
            with pytest.raises(DatasetError):
                read_sharegpt(bad)

    def test_lengths_come_from_the_endpoints_counts(self):
        entries = count_lengths([{"prompt": "one two three", "answer": "a b c d e"}], words_counter)
        assert entries == [{"messages": [{"role": "user", "content": "one two three"}], "prompt_tokens": 6,
                            "max_tokens": 5}]
        planned = ShareGPTWorkload(entries).session(random.Random(0)).next_request(None)
        assert planned.max_tokens == 5 and planned.requested_prompt_tokens == 6
        assert ShareGPTWorkload(entries, fixed_length(9)).session(random.Random(0)).next_request(None).max_tokens == 9
        asked = []
        prompts_only = count_lengths([{"prompt": "x y", "answer": "a b"}], lambda m: asked.append(m) or 5,
                                     answers=False)
        assert prompts_only == [{"messages": [{"role": "user", "content": "x y"}], "prompt_tokens": 5}]
        assert len(asked) == 1  # --output-tokens given: the answers are not counted


class TestTrace:
    def test_rows_are_sorted_and_checked(self, tmp_path):
        path = tmp_path / "t.jsonl"
        path.write_text('{"timestamp": 5, "input_length": 3, "output_length": 1, "hash_ids": [1]}\n'
                        '{"timestamp": 1, "input_length": 2, "output_length": 1}\n')
        assert [r["timestamp"] for r in read_trace(path)] == [1, 5]
        path.write_text('{"timestamp": 5, "input_length": 0, "output_length": 1}\n')
        with pytest.raises(DatasetError, match=":1:"):
            read_trace(path)

    def test_the_schedule_is_the_trace_time_scaled_and_split_between_workers(self):
        workload = TraceWorkload(read_trace(DATA / "mooncake_trace_sample.jsonl"), ONE_PER_WORD, speed=2.0)
        both = sorted([*workload.schedule(0, 2), *workload.schedule(1, 2)], key=lambda due: due[1])
        assert [slot for _, slot in both] == list(range(12))
        assert [ns for ns, _ in both] == [int(row["timestamp"] / 2 * 1e6) for row in workload.rows]
        assert [slot for _, slot in workload.schedule(1, 2)] == [1, 3, 5, 7, 9, 11]
        assert workload.span_s == pytest.approx(0.825)

    def test_equal_hash_ids_give_equal_prefixes_and_the_asked_length(self):
        workload = TraceWorkload(read_trace(DATA / "mooncake_trace_sample.jsonl"), ONE_PER_WORD, block_tokens=16)
        session = workload.session(random.Random(0))
        first, second, other = (session.next_request(i) for i in (0, 1, 2))  # hash ids [0,1,2], [0,1,3], [4,5]
        for planned, row in ((first, workload.rows[0]), (second, workload.rows[1]), (other, workload.rows[2])):
            assert words_counter(planned.messages) == row["input_length"] == planned.requested_prompt_tokens
            assert planned.max_tokens == row["output_length"]
        a, b = first.messages[0]["content"].split(), second.messages[0]["content"].split()
        assert a[:3 + 32] == b[:3 + 32] and a[3 + 32:] != b[3 + 32:]  # blocks 0 and 1 shared, then not
        assert other.messages[0]["content"].split()[3:8] != a[3:8]
        assert [tokens for _, tokens in first.prefix_blocks] == [16, 16, 2]  # 40 - 6 of template, cut at the end


def test_every_workload_survives_the_wire():
    entries = [{"messages": [{"role": "user", "content": "x"}], "prompt_tokens": 3, "max_tokens": 2}]
    for workload in (
        SyntheticWorkload(parse_length("uniform:2,9"), words=3, prompt_tokens=parse_length("normal:20,5"),
                          scale=ONE_PER_WORD),
        DatasetWorkload(entries, fixed_length(2), "f"),
        ShareGPTWorkload(entries, None, "s"),
        SharedPrefixWorkload(3, 20, fixed_length(5), fixed_length(2), ONE_PER_WORD, seed=4),
        MultiTurnWorkload(4, 0.5, fixed_length(3), words=5, user_tokens=parse_length("uniform:4,8"),
                          scale=ONE_PER_WORD),
        TraceWorkload(read_trace(DATA / "mooncake_trace_sample.jsonl"), ONE_PER_WORD, speed=3.0, block_tokens=8),
        ToolsWorkload(fixed_length(4), choice="named", words=5, source="t.json"),
    ):
        assert from_wire(json.loads(json.dumps(workload.to_wire()))) == workload


def test_synthetic_prompts_follow_the_length_distribution():
    workload = SyntheticWorkload(parse_length("uniform:30,50"), prompt_tokens=parse_length("uniform:20,200"),
                                 scale=ONE_PER_WORD)
    session = workload.session(random.Random(3))
    for _ in range(50):
        planned = session.next_request(None)
        assert 20 <= planned.requested_prompt_tokens <= 200 and 30 <= planned.max_tokens <= 50
        # "Continue this list:" (3 words) + the words + 3 template tokens, as the mock counts
        assert len(planned.messages[0]["content"].split()) + 3 == planned.requested_prompt_tokens


class TestToolsWorkload:
    def test_every_request_offers_the_tools_with_its_choice(self):
        for choice in ("required", "auto", "none"):
            session = ToolsWorkload(fixed_length(9), choice=choice, words=4).session(random.Random(1))
            planned = session.next_request(None)
            body = request_body(planned, model="m", stream=True, extra_body={})
            assert body["tools"] == list(SAMPLE_TOOLS) and body["tool_choice"] == choice and body["max_tokens"] == 9
            assert "get_weather" in body["messages"][0]["content"]

    def test_named_forces_each_tool_in_turn_at_random(self):
        session = ToolsWorkload(fixed_length(9), choice="named").session(random.Random(2))
        names = [session.next_request(None).tool_choice["function"]["name"] for _ in range(60)]
        assert set(names) == {"get_weather", "search_documents", "create_event"}

    def test_other_workloads_send_no_tools(self):
        planned = SyntheticWorkload(fixed_length(3), words=2).session(random.Random(0)).next_request(None)
        assert not {"tools", "tool_choice"} & set(request_body(planned, model="m", stream=False, extra_body={}))

    def test_a_users_own_tools_file(self, tmp_path):
        mine = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
        (tmp_path / "tools.json").write_text(json.dumps(mine))
        built = build_workload(TestBuild().args("--workload", "tools", "--tools-file", str(tmp_path / "tools.json"),
                                                "--tool-choice", "auto"), words_counter)
        assert isinstance(built, ToolsWorkload) and built.tools == tuple(mine) and built.choice == "auto"
        assert build_workload(TestBuild().args("--workload", "tools"), words_counter).choice == "required"

    @pytest.mark.parametrize(("content", "message"), [
        ("not json", "tools.json"),
        ("[]", "non-empty JSON array"),
        ('[{"type": "function", "function": {}}]', "tool 0: needs"),
        ('[{"type": "function", "function": {"name": "a", "parameters": 3}}]', "must be a JSON Schema"),
        ('[{"type": "function", "function": {"name": "a"}}, {"type": "function", "function": {"name": "a"}}]',
         "used twice"),
    ])
    def test_bad_tools_files_are_one_line_errors(self, tmp_path, content, message):
        (tmp_path / "tools.json").write_text(content)
        with pytest.raises(WorkloadError, match=message):
            build_workload(TestBuild().args("--workload", "tools", "--tools-file", str(tmp_path / "tools.json")),
                           words_counter)


class TestBuild:
    def args(self, *argv: str) -> argparse.Namespace:
        parser = argparse.ArgumentParser()
        for name in ("--prompt-tokens", "--output-tokens", "--dataset"):
            parser.add_argument(name, default=None)
        parser.add_argument("--prompt-words", type=int, default=32)
        parser.add_argument("--seed", type=int, default=0)
        add_workload_arguments(parser)
        return parser.parse_args(argv)

    def test_each_kind_is_built_from_its_options(self):
        built = build_workload(self.args("--prompt-tokens", "uniform:10,20", "--output-tokens", "normal:8,2"),
                               words_counter)
        assert isinstance(built, SyntheticWorkload) and built.scale == TokenScale(6.0, 1.0)
        shared = build_workload(self.args("--workload", "shared-prefix", "--groups", "3"), words_counter)
        assert isinstance(shared, SharedPrefixWorkload) and shared.groups == 3 and shared.prefix_tokens == 512
        sharegpt = build_workload(self.args("--workload", "sharegpt", "--dataset", str(DATA / "sharegpt_sample.json"),
                                            "--dataset-limit", "2"), words_counter)
        assert isinstance(sharegpt, ShareGPTWorkload) and len(sharegpt.entries) == 2
        assert sharegpt.entries[0]["max_tokens"] == 12  # "The capital of France is Paris, ..." in words

    def test_sharegpt_without_usage_needs_output_tokens(self):
        def no_usage(messages: list[dict]) -> int:
            raise RuntimeError("the endpoint returned no usage.prompt_tokens")

        argv = ("--workload", "sharegpt", "--dataset", str(DATA / "sharegpt_sample.json"))
        with pytest.raises(WorkloadError, match="give --output-tokens"):
            build_workload(self.args(*argv), no_usage)
        built = build_workload(self.args(*argv, "--output-tokens", "7"), no_usage)
        planned = built.session(random.Random(0)).next_request(None)
        assert planned.max_tokens == 7 and planned.requested_prompt_tokens is None

    @pytest.mark.parametrize(("argv", "message"), [
        (("--workload", "trace"), "needs --trace"),
        (("--trace", "t.jsonl"), "--trace goes with --workload trace"),
        (("--workload", "sharegpt"), "needs --dataset"),
        (("--workload", "multi-turn", "--dataset", "d.jsonl"), "--dataset goes with"),
        (("--output-tokens", "uniform:9,2"), "--output-tokens"),
        (("--workload", "shared-prefix", "--groups", "0"), "--groups"),
        (("--workload", "multi-turn", "--turns", "0"), "--turns"),
        (("--tools-file", "t.json"), "--tools-file goes with --workload tools"),
        (("--tool-choice", "auto"), "--tool-choice goes with --workload tools"),
        (("--workload", "tools", "--prompt-tokens", "40"), "--prompt-words"),
    ])
    def test_options_that_do_not_fit_are_one_line_errors(self, argv, message):
        with pytest.raises(WorkloadError, match=message):
            build_workload(self.args(*argv), words_counter)


def done(send_ms: float, prompt: int, *, blocks=(), max_tokens=None, completion=None, turn=None) -> RequestRecord:
    record = RequestRecord(send_ns=int(send_ms * 1e6), stream=False, status=200, end_ns=int(send_ms * 1e6) + 1,
                           usage_prompt=prompt, usage_completion=completion, max_tokens=max_tokens,
                           prefix_blocks=[list(b) for b in blocks], turn=turn)
    return record


class TestWorkloadMetrics:
    def test_prefix_sharing_counts_blocks_sent_before_in_prefix_order(self):
        records = [done(2, 100, blocks=[("a", 40), ("b", 40)]),
                   done(1, 100, blocks=[("a", 40), ("c", 40)]),  # sent first, though listed second
                   done(3, 100, blocks=[("x", 40), ("b", 40)]),  # "b" after an unseen block: not a shared prefix
                   done(4, 50),
                   done(5, 100, blocks=[("a", 40), ("b", 50)])]  # "b" was sent 40 long: 40 of its 50 shared
        sharing = prefix_sharing(records, Window(0, 10**9))
        assert sharing == {"reusable_prompt_tokens": 40 + 80, "prompt_tokens": 450, "ratio": 120 / 450}
        warm = prefix_sharing(records, Window(int(1.5e6), 10**9))  # the warm-up request still filled the cache
        assert warm["reusable_prompt_tokens"] == 120 and warm["prompt_tokens"] == 350
        assert prefix_sharing([done(1, 10)], Window(0, 10**9)) is None

    def test_asked_against_served(self):
        records = [done(1, 10, max_tokens=8, completion=8), done(2, 12, max_tokens=8, completion=3, turn=1),
                   done(3, 30, max_tokens=6, completion=6, turn=2)]
        metrics = workload_metrics(records, Window(0, 10**9))
        assert metrics["output_short"] == 1
        assert metrics["output_tokens"]["requested"]["mean"] == pytest.approx(22 / 3)
        assert sum(metrics["output_tokens"]["served_counts"]) == 3
        assert metrics["input_tokens"]["requested"]["count"] == 0 and metrics["input_tokens"]["served"]["max"] == 30
        assert [(t["turn"], t["requests"], t["prompt_tokens_mean"]) for t in metrics["per_turn"]] == [(1, 1, 12.0),
                                                                                                      (2, 1, 30.0)]

    def test_histograms_share_their_edges(self):
        comparison = length_comparison([5, 5, 9], [5, 4, 9])
        assert comparison["edges"][0] == 4 and comparison["edges"][-1] == 10
        assert sum(comparison["requested_counts"]) == sum(comparison["served_counts"]) == 3
