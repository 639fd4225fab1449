"""The loopmw command line, on real stores."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from loop_middleware import LoopCallbackHandler, Store
from loop_middleware.cli import app
from tests._fakes import fake_model, reply, tool_call
from tests.capture.test_handler import build_graph, order_lookup, run

runner = CliRunner()


def _store_with_threads(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    handler = LoopCallbackHandler(url)
    graph = build_graph(fake_model(tool_call("order_lookup", {"order_id": "5"}), reply("Order 5 shipped.")),
                        [order_lookup])
    run(graph, handler, "cli-1", "Where is order 5?")
    handler.flush()
    return url


def test_help_explains_every_command() -> None:
    out = subprocess.run([sys.executable, "-m", "loop_middleware", "--help"], capture_output=True,
                         text=True, check=True).stdout
    for cmd in ("threads", "show", "ingest", "feedback", "extract", "analyze", "propose",
                "measure", "report", "demo", "doctor"):
        assert cmd in out
    res = runner.invoke(app, ["propose", "--help"])
    assert res.exit_code == 0 and "--allow" in res.output and "--yes" in res.output


def test_threads_show_and_feedback(tmp_path: Path) -> None:
    url = _store_with_threads(tmp_path)
    res = runner.invoke(app, ["threads", "--db", url, "--json"])
    assert res.exit_code == 0, res.output
    [t] = json.loads(res.stdout)
    assert t["thread_id"] == "cli-1" and t["turns"][0]["tool_calls"][0]["name"] == "order_lookup"
    res = runner.invoke(app, ["show", "cli-1", "--db", url])
    assert res.exit_code == 0 and "Where is order 5?" in res.output and "order_lookup" in res.output
    res = runner.invoke(app, ["feedback", "cli-1", "--thumbs", "down", "--comment", "slow", "--db", url])
    assert res.exit_code == 0
    assert Store(url).get_thread("cli-1").feedback[0].label == "thumbs_down"  # type: ignore[union-attr]


def test_clear_errors_for_bad_input(tmp_path: Path) -> None:
    res = runner.invoke(app, ["threads", "--db", str(tmp_path / "missing.db")])
    assert res.exit_code == 1 and "no store at" in res.output
    url = _store_with_threads(tmp_path)
    res = runner.invoke(app, ["show", "nope", "--db", url])
    assert res.exit_code == 1 and "no thread 'nope'" in res.output
    bad = tmp_path / "bad.json"
    bad.write_text('{"resourceSpans": [{"scopeSpans": [{"spans": [{"spanId": ""}]}]}]}')
    res = runner.invoke(app, ["ingest", str(bad), "--db", url])
    assert res.exit_code == 0 and "skipped" in res.output and "traceId" in res.output
    res = runner.invoke(app, ["ingest", str(tmp_path / "nothing.json"), "--db", url])
    assert res.exit_code == 1 and "cannot read" in res.output
    res = runner.invoke(app, ["feedback", "cli-1", "--thumbs", "sideways", "--db", url])
    assert res.exit_code == 1 and "'up' or 'down'" in res.output


def test_extract_and_analyze_print_tables(tmp_path: Path) -> None:
    url = _store_with_threads(tmp_path)
    res = runner.invoke(app, ["extract", "--db", url, "--embedder", "tfidf"])
    assert res.exit_code == 0, res.output
    assert "new or updated threads" in res.output
    # It says loudly which embedder ran and the quality to expect, and how to do better.
    assert "TF-IDF" in res.output and "expect NMI ~0.57" in res.output
    res = runner.invoke(app, ["extract", "--db", url, "--embedder", "fast"])
    assert res.exit_code == 0, res.output
    assert "static model" in res.output and "expect NMI ~0.72" in res.output
    res = runner.invoke(app, ["analyze", "--db", url, "--embedder", "tfidf"])
    assert res.exit_code == 0 and "diagnoses over 1 threads" in res.output
    assert "TF-IDF" in res.output and "expect NMI ~0.57" in res.output
    res = runner.invoke(app, ["extract", "--db", url, "--embedder", "bogus"])
    assert res.exit_code == 1 and "default, fast or tfidf" in res.output


def test_extract_in_worker_processes_stores_what_one_process_stores(tmp_path: Path) -> None:
    from tests.scale._helpers import fill, snapshot

    one, two = (f"sqlite:///{tmp_path / name}" for name in ("one.db", "two.db"))
    for url in (one, two):
        fill(Store(url), 300, seed=5)
    res = runner.invoke(app, ["extract", "--db", one, "--embedder", "tfidf"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["analyze", "--db", two, "--embedder", "tfidf", "--workers", "2"])
    assert res.exit_code == 0, res.output
    assert "diagnoses over 300 threads" in res.output
    assert snapshot(Store(two)) == snapshot(Store(one))
    assert "--workers" in runner.invoke(app, ["extract", "--help"]).output
    res = runner.invoke(app, ["extract", "--db", "sqlite://", "--workers", "2"])
    assert res.exit_code == 1 and "in-memory SQLite" in res.output


def test_doctor_says_which_embedder_runs_and_checks_the_store(tmp_path: Path) -> None:
    res = runner.invoke(app, ["doctor"])
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    for mode in ("default", "fast", "tfidf"):
        assert f"embedder ({mode})" in text
    assert "expect NMI" in text and "loaded and embedded offline" in text
    # A store with intents: past conversations imported, then extracted with TF-IDF.
    history = tmp_path / "history.jsonl"
    asks = [f"Where is my refund for order {n}?" for n in range(20)]
    asks += [f"How do I reset my password, attempt {n}?" for n in range(20)]
    history.write_text("".join(json.dumps({"id": f"h{i}", "messages": [
        {"role": "user", "content": a}, {"role": "assistant", "content": "Let me check."}]}) + "\n"
        for i, a in enumerate(asks)))
    url = f"sqlite:///{tmp_path / 'doctor.db'}"
    assert runner.invoke(app, ["import", str(history), "--db", url]).exit_code == 0
    res = runner.invoke(app, ["extract", "--db", url, "--embedder", "tfidf"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["doctor", "--db", url])
    text = " ".join(res.output.split())
    assert res.exit_code == 0 and "40 threads" in text and "stored intents" in text
    assert "TF-IDF" in text.split("stored intents", 1)[1]
    res = runner.invoke(app, ["doctor", "--db", str(tmp_path / "missing.db")])
    assert res.exit_code == 1 and "no store at" in res.output


def test_core_install_says_it_fell_back_and_how_to_get_minilm(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.util

    original = importlib.util.find_spec

    def no_torch(name: str, *args: Any, **kwargs: Any) -> Any:
        # The core install: no torch, no sentence-transformers.
        if name.split(".")[0] in {"torch", "sentence_transformers"}:
            return None
        return original(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", no_torch)
    url = _store_with_threads(tmp_path)
    res = runner.invoke(app, ["extract", "--db", url])
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert "note:" in text and "static model" in text and "expect NMI ~0.72" in text
    assert "pip install 'loop-middleware[embeddings]'" in text and "torch is not installed" in text
