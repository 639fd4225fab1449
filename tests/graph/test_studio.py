"""A real ``langgraph dev`` server serving integrations/langgraph.json, driven by langgraph-sdk."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.graph.conftest import Host

ROOT = Path(__file__).resolve().parents[2]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def server(host: Host, tmp_path: Path):  # type: ignore[no-untyped-def]
    port = _port()
    env = {
        **os.environ,
        "LANGGRAPH_CLI_NO_ANALYTICS": "1", "LANGSMITH_TRACING": "false",
        "LOOP_DATABASE_URL": host.db_url, "LOOP_REPO_DIR": str(host.repo),
        "LOOP_ALLOWED_GLOBS": "prompts/**/*.md,agent.yaml", "LOOP_CONFIG_FILES": "agent.yaml",
        "LOOP_OUT_DIR": str(tmp_path / "prs"),
    }
    cli = Path(sys.executable).with_name("langgraph")
    log = (tmp_path / "server.log").open("w")
    proc = subprocess.Popen(
        [str(cli), "dev", "--config", "integrations/langgraph.json", "--port", str(port),
         "--host", "127.0.0.1", "--no-browser", "--no-reload"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail("langgraph dev exited: " + (tmp_path / "server.log").read_text()[-3000:])
        try:
            if httpx.get(f"{url}/ok", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.5)
    else:
        pytest.fail("langgraph dev did not start: " + (tmp_path / "server.log").read_text()[-3000:])
    try:
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        log.close()


def test_langgraph_dev_serves_the_loop_graph_with_interrupt_and_resume(server: str, host: Host) -> None:
    from langgraph_sdk import get_sync_client

    with get_sync_client(url=server) as client:
        _drive(client, host)


def _drive(client: Any, host: Host) -> None:
    [assistant] = client.assistants.search(graph_id="loop")
    thread = client.threads.create()
    state = client.runs.wait(thread["thread_id"], assistant["assistant_id"], input={})
    interrupts = state.get("__interrupt__") if isinstance(state, dict) else None
    assert interrupts, state
    fixes = interrupts[0]["value"]["fixes"]
    assert fixes and all(f["diff"].startswith(("---", "diff")) for f in fixes)
    target = fixes[0]
    final = client.runs.wait(
        thread["thread_id"], assistant["assistant_id"],
        command={"resume": {f["id"]: ("approve" if f is target else "reject") for f in fixes}},
    )
    [pub] = final["published"]
    assert pub["fix_id"] == target["id"]
    branches = subprocess.run(["git", "branch", "--list", "loop/*"], cwd=host.repo,
                              capture_output=True, text=True, check=True).stdout
    assert pub["branch"] in branches
    patch = Path(pub["patch"]).read_text()
    assert target["target_file"] in patch
    check = subprocess.run(["git", "apply", "--check", pub["patch"]], cwd=host.repo,
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
