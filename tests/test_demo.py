"""`loopmw demo`: the README's first command, end to end (small cohorts to stay fast)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_demo_closes_the_loop(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    proc = subprocess.run(
        [sys.executable, "-m", "loop_middleware", "demo", "--out", str(out), "--threads", "150",
         "--seed", "3"],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "stands in for a human" in proc.stdout  # the merge is said to be a stand-in
    summary = json.loads((out / "summary.json").read_text())
    assert summary["threads"] >= 150 + 75 + 150
    modes = {d["failure_mode"] for d in summary["diagnoses"]}
    assert modes & {"coverage_gap", "ungrounded_answer", "regression", "context_loss"}
    for d in summary["diagnoses"]:
        assert 0 < d["share_of_sessions"] <= 1 and d["intent"]
    assert summary["fixes"], "no fix proposed"
    for f in summary["fixes"]:
        assert f["target_file"] in ("prompts/support.md", "agent.yaml")
        assert f["decision"] in ("keep", "revert", "wait")
        assert f["branch"].startswith("loop/fix-")
    html = (out / "report.html").read_text()
    assert "<html" in html and summary["diagnoses"][0]["id"] in html
    # the branches are real, and nothing outside the allowed files changed on main
    changed = subprocess.run(["git", "diff", "--name-only", "HEAD~1", "HEAD"], cwd=out / "host_repo",
                             capture_output=True, text=True, check=True).stdout
    assert set(changed.split()) <= {"prompts/support.md", "agent.yaml"}
    # The loop wrote no policy of its own: the refund section's policy is the example's own
    # (reviewer/policies.yaml, outside the host repo), written in by the simulated reviewer.
    merged = (out / "host_repo" / "prompts" / "support.md").read_text()
    if "## Refund policy" in merged:
        assert "the reviewer wrote the example's own policy in" in proc.stdout
        assert "within 60 days" in merged and "<refund policy:" not in merged
        assert "placeholder(s) in 'Refund policy'" in proc.stdout  # the loop proposed no facts
