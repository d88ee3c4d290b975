"""benchmarks/compat_matrix.py, fast: one real short run over our own server (mock engine), a peer
that is not installed (its column keeps the reason), and the table built from small reports with
a triage file. The real peers (torch, LiteLLM, llama.cpp) never run here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import compat_table  # noqa: E402


def test_smoke_run_over_our_server_and_a_peer_that_is_not_installed(tmp_path: Path) -> None:
    doc = tmp_path / "compatibility.md"
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}  # nothing cached: no peer can start
    out = subprocess.run([sys.executable, "benchmarks/compat_matrix.py", "--servers",
                          "chatspec-documented,llama-server", "--skip-install", "--chatspec-engine", "mock",
                          "-k", "usage", "--out", str(tmp_path / "out"), "--doc", str(doc)],
                         capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
    assert out.returncode == 0, out.stderr
    ours = json.loads((tmp_path / "out" / "chatspec-documented" / "conformance.json").read_text())
    assert ours["summary"]["passed"] == 6 and ours["target"]["chat_url"].endswith("/v3/openai/chat/completions")
    peer = json.loads((tmp_path / "out" / "llama-server" / "matrix.json").read_text())
    assert "not built" in peer["reason"] and "--skip-install" in peer["reason"]
    text = doc.read_text()
    assert "| chatspec-documented | llama-server |" in text  # a column each, the peer's kept
    assert "| `usage.totals_add_up` | must | pass | - |" in text
    assert "could not run: llama-server is not built" in text


def _write(folder: Path, name: str, checks: list[dict], reason: str | None = None) -> None:
    (folder / name).mkdir(parents=True)
    status = {"server": name, "version": f"{name} 1.0", "wall_s": 12.5}
    if reason:
        status["reason"] = reason
    else:
        summary = {k: sum(c["outcome"] == k for c in checks) for k in compat_table.ORDER}
        features: dict[str, dict[str, int]] = {}
        for c in checks:
            features.setdefault(c["feature"], dict.fromkeys(compat_table.ORDER, 0))[c["outcome"]] += 1
        (folder / name / "conformance.json").write_text(json.dumps({
            "target": {"profile": "openai"}, "duration_s": 10.0, "aborted": None, "not_run": [],
            "summary": summary, "by_feature": features, "checks": checks}))
    (folder / name / "matrix.json").write_text(json.dumps(status))


def test_table_marks_each_failure_with_its_triage(tmp_path: Path) -> None:
    def item(check_id: str, outcome: str, message: str = "", severity: str = "must") -> dict:
        return {"id": check_id, "feature": check_id.split(".")[0], "outcome": outcome, "message": message,
                "severity": severity}

    _write(tmp_path, "a", [item("stop.x", "passed"), item("n.y", "failed", "n ignored | when streaming"),
                           item("ranges.t", "failed", "500", severity="should")])
    _write(tmp_path, "b", [item("stop.x", "failed", "cut off"), item("n.y", "not_supported")])
    _write(tmp_path, "c", [], reason="pip install failed")
    triage = tmp_path / "triage.yaml"
    triage.write_text("a:\n  n.*: {verdict: deviation, rule: 'n choices', tracker: 'https://x/1'}\n"
                      "'*':\n  stop.x: {verdict: deviation, rule: 'stop kept'}\n")
    text = compat_table.render(tmp_path, ["a", "b", "c"], triage)
    assert "| a | a 1.0 | openai | 1 | 2 (1 / 1) | 0 | 0 | 0 | 12.5 s (checks 10 s) |" in text  # must / should
    assert "| b | b 1.0 | openai | 0 | 1 (1 / 0) |" in text
    assert "| `stop.x` | must | pass | **FAIL** | - |" in text
    assert "| `ranges.t` | should | **FAIL** | - | - |" in text
    assert "| `n.y` | must | **FAIL** | n/s | - |" in text
    assert "| stop | 1/1 | 0/1 | - |" in text and "| n | 0/1 | 0/0 (1 n/s) | - |" in text
    assert "| `n.y` | n ignored \\| when streaming | **deviation**; n choices; tracker: https://x/1 |" in text
    assert "| `ranges.t` | 500 | UNTRIAGED |" in text
    assert "| `stop.x` | cut off | **deviation**; stop kept |" in text  # the '*' scope
    assert "| c | c 1.0 | - | could not run: pip install failed |" in text


def test_the_closest_triage_pattern_wins() -> None:
    triage = {"s": {"ranges.*": {"verdict": "broad"}, "stop.x": {"verdict": "own"}},
              "*": {"ranges.top_k.*": {"verdict": "specific"}, "stop.x": {"verdict": "shared"}}}
    assert compat_table.triage_of(triage, "s", "ranges.top_k.null")["verdict"] == "specific"
    assert compat_table.triage_of(triage, "s", "ranges.n.null")["verdict"] == "broad"
    assert compat_table.triage_of(triage, "s", "stop.x")["verdict"] == "own"
    assert compat_table.triage_of(triage, "other", "stop.x")["verdict"] == "shared"
    assert compat_table.triage_of(triage, "s", "n.y") is None


def test_tool_calls_section_groups_the_servers(tmp_path: Path) -> None:
    def item(check_id: str, outcome: str, message: str = "") -> dict:
        return {"id": check_id, "feature": "tools", "outcome": outcome, "message": message, "severity": "must"}

    _write(tmp_path, "good", [item("tools.message_shape", "passed"), item("tools.stream_index", "passed"),
                              item("tools.parallel_distinct", "not_supported", "one call")])
    _write(tmp_path, "bad", [item("tools.message_shape", "passed"),
                             item("tools.stream_index", "failed", "tool_calls delta 0 has index None")])
    _write(tmp_path, "none", [item("tools.message_shape", "not_supported", "answered without tool_calls"),
                              item("tools.stream_index", "not_supported", "answered without tool_calls")])
    _write(tmp_path, "doc", [item("tools.message_shape", "skipped", "openai profile only")])
    triage = tmp_path / "triage.yaml"
    triage.write_text("none:\n  tools.*: {verdict: not offered, note: 'template has no tools'}\n"
                      "good:\n  tools.parallel_distinct: {verdict: by design, note: 'one call per answer'}\n")
    text = compat_table.render(tmp_path, ["good", "bad", "none", "doc"], triage)
    section = text.split("## Tool calls", 1)[1].split("\n## ", 1)[0]
    assert "Stream tool calls correctly (every `tools` check that ran passed)**: good." in section
    assert "  - good: 2 passed, 1 not supported" in section
    assert "    - `tools.parallel_distinct` not supported: one call per answer" in section
    assert "a `tools` check failed)**: bad." in section
    assert "    - `tools.stream_index` FAILS (streamed form): tool_calls delta 0 has index None (UNTRIAGED)" in section
    assert "never failed)**: none." in section and section.count("template has no tools") == 1  # once per entry
    assert "Not checked for tools**: doc." in section and "  - doc: openai profile only" in section
