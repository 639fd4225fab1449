"""Real simulated conversations of the example agents, for the diagnosis and fix tests.

:func:`simulate_host` copies an example agent's prompt and ``agent.yaml`` into a host repository
folder, runs its simulator against them (captured by a real :class:`LoopCallbackHandler` into a
SQLite store), detects the signals and groups the threads by their *true* intent (the
simulator's ground truth), so a test diagnoses real conversations without the embedder.
"""

from __future__ import annotations

import importlib
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loop_middleware import LoopCallbackHandler, Store
from loop_middleware.extract import detect_signals
from loop_middleware.types import Intent, Signal, Thread

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
DATA_KEYS = {"devplatform_agent": ("docs_dir", "projects_file"),
             "support_agent": ("kb_dir", "orders_file")}


@dataclass
class Simulated:
    repo: Path
    threads: list[Thread]
    signals: list[Signal]
    intents: list[Intent]
    assignments: dict[str, str | None]
    truth: dict[str, Any]
    """thread id -> the simulator's ``SimulatedThread``."""

    def failures(self, kind: str) -> int:
        return sum(kind in t.failures for t in self.truth.values())


def host_repo(repo: Path, example: str = "devplatform_agent", *,
              prompt: Callable[[str], str] | None = None, **config: Any) -> Path:
    """``repo`` with the example's current prompt (``prompts/support.md``, optionally rewritten by
    ``prompt``) and its ``agent.yaml`` (data paths made absolute, ``config`` keys replaced)."""
    folder = EXAMPLES / example
    (repo / "prompts").mkdir(parents=True, exist_ok=True)
    text = (folder / "prompts" / "support.md").read_text(encoding="utf-8")
    (repo / "prompts" / "support.md").write_text(prompt(text) if prompt else text, encoding="utf-8")
    lines = []
    for line in (folder / "agent.yaml").read_text(encoding="utf-8").splitlines():
        key = line.split(":", 1)[0].strip()
        if not line.startswith("#") and key in DATA_KEYS[example]:
            line = f"{key}: {folder / line.split(':', 1)[1].strip()}"
        elif not line.startswith("#") and key in config:
            line = f"{key}: {config[key]}"
        lines.append(line)
    (repo / "agent.yaml").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return repo


def simulate_host(repo: Path, n: int, seed: int, example: str = "devplatform_agent",
                  prefix: str = "t", after: Simulated | None = None) -> Simulated:
    """Simulate ``n`` conversations of ``example`` against the host repository ``repo``; with
    ``after``, into the same store (e.g. traffic on prompt v1, then on v2 at the same path)."""
    simulate = importlib.import_module(f"examples.{example}").simulate
    db = repo.parent / f"{repo.name}.db"
    if after is None:
        for stale in repo.parent.glob(f"{db.name}*"):
            stale.unlink()
    store = Store(f"sqlite:///{db}")
    handler = LoopCallbackHandler(store, emit_spans=False)
    try:
        summary = simulate(n, seed=seed, prompt_dir=repo / "prompts", config_path=repo / "agent.yaml",
                           callbacks=[handler], store=store, thread_prefix=prefix)
    finally:
        handler.close()
    threads = store.list_threads()
    store.close()
    truth = {**(after.truth if after else {}), **{t.thread_id: t for t in summary.threads}}
    names = sorted({t.intent for t in truth.values()})
    intents = [Intent(id=f"i-{name}", name=name, category="how_to",
                      size=sum(t.intent == name for t in truth.values())) for name in names]
    assignments: dict[str, str | None] = {tid: f"i-{t.intent}" for tid, t in truth.items()}
    return Simulated(repo, threads, detect_signals(threads), intents, assignments, truth)


def copy_repo(src: Path, dst: Path) -> Path:
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
    return dst
