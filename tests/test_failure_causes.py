"""The reports group failures that share one cause: a server that answers every invalid value
with 500 fails many range checks, and every report names that one cause with their ids."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from broken_servers import FAULTS, broken_server

from reference_server.launcher import running_server

CAUSE = "a client mistake answered 500 (a server error)"


def test_failures_of_one_cause_are_grouped_in_every_report(tmp_path: Path) -> None:
    fault = next(f for f in FAULTS if f.name == "five_hundred_on_bad_param")
    with running_server("--ttft-ms", "0", "--itl-ms", "0", engine="mock") as server:
        with broken_server(server.base_url, fault, server.api_key) as url:
            out = subprocess.run([sys.executable, "-m", "conformance", "--base-url", url, "--api-key",
                                  server.api_key or "", "-k", "ranges.temperature or ranges.n.", "--quiet",
                                  "--report-dir", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 1, out.stdout + out.stderr
    data = json.loads((tmp_path / "conformance.json").read_text())
    failed = [c["id"] for c in data["checks"] if c["outcome"] == "failed"]
    assert len(failed) >= 6 and data["shared_causes"] == {CAUSE: failed}
    assert all(c["cause"] == CAUSE for c in data["checks"] if c["outcome"] == "failed")
    causes = {p.get("value") for p in ET.parse(tmp_path / "junit.xml").iter("property") if p.get("name") == "cause"}
    assert causes == {CAUSE}
    assert f"<b>{CAUSE}</b>: {len(failed)} checks" in (tmp_path / "conformance.html").read_text()
    summary = (tmp_path / "summary.md").read_text()
    assert "### Failures sharing one cause" in summary and f"- {CAUSE}: {len(failed)} checks" in summary
