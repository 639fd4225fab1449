"""`loopmw demo`: the README's first command, end to end (small cohorts to stay fast)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

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


def test_demo_runs_on_the_second_example(tmp_path: Path) -> None:
    """`--example` picks the agent: the Kestrel Cloud example's own simulator, agent and files."""
    out = tmp_path / "demo"
    proc = subprocess.run(
        [sys.executable, "-m", "loop_middleware", "demo", "--out", str(out), "--threads", "120",
         "--seed", "1", "--embedder", "fast", "--example", str(ROOT / "examples" / "devplatform_agent")],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    repo = out / "host_repo"
    # The host repo is the Kestrel example's: its harness config, with its data paths absolute.
    config = (repo / "agent.yaml").read_text()
    assert "name: kestrel-devsupport" in config
    assert f"docs_dir: {ROOT / 'examples' / 'devplatform_agent' / 'kb'}" in config
    first = subprocess.run(["git", "log", "--format=%s", "--reverse"], cwd=repo, capture_output=True,
                           text=True, check=True).stdout.splitlines()[0]
    assert first == "Kestrel Cloud agent, prompt v1"
    # Its traffic is the Kestrel simulator's (thread ids of its cohorts, developer-platform talk).
    assert summary["threads"] >= 60 + 120 + 120
    assert any("search_docs" in d["summary"] or "English" in d["summary"] for d in summary["diagnoses"])
    assert {f["target_file"] for f in summary["fixes"]} <= {"prompts/support.md", "agent.yaml"}
    assert "Kestrel Cloud" in (out / "report.html").read_text()


def test_demo_refuses_a_folder_that_is_not_an_example(tmp_path: Path) -> None:
    from loop_middleware.demo import run_demo
    from loop_middleware.errors import ConfigError

    (tmp_path / "examples" / "nothing").mkdir(parents=True)
    with pytest.raises(ConfigError, match="not an example agent"):
        run_demo(tmp_path / "out", example=tmp_path / "examples" / "nothing", say=lambda _: None)
