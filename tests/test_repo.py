"""The repository's promises: exported API, README commands, CI script."""

from __future__ import annotations

import re
from pathlib import Path

import loop_middleware

ROOT = Path(__file__).resolve().parents[1]


def test_public_api_is_exported() -> None:
    expected = {
        "LoopCallbackHandler", "LoopMiddleware", "Store", "load_prompt", "PromptVersion",
        "Thread", "Turn", "LLMCall", "ToolCall", "Message", "Feedback", "Signal", "Intent",
        "Diagnosis", "Evidence", "Fix", "FixKind", "LoopError", "StoreError", "IngestError",
        "ConfigError", "PatchError", "PathNotAllowedError", "ContractViolationError",
        "GitHubError", "ExtractionError", "LLMError", "PromptRegistry", "__version__",
    }
    assert expected <= set(loop_middleware.__all__)
    for name in loop_middleware.__all__:
        assert hasattr(loop_middleware, name), name
    assert sorted(loop_middleware.__all__) == list(loop_middleware.__all__)


def test_errors_form_one_tree() -> None:
    for name in loop_middleware.__all__:
        obj = getattr(loop_middleware, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, loop_middleware.LoopError)


def _readme_blocks() -> list[str]:
    return re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)


def test_ci_runs_the_readme_test_command() -> None:
    test_cmd = [ln for b in _readme_blocks() for ln in b.splitlines() if ln and not ln.startswith("#")]
    assert len(test_cmd) >= 2
    ci = (ROOT / ".ci" / "run").read_text()
    readme_test = test_cmd[1].replace("pip install", "python -m pip install -q")
    assert readme_test in ci, (readme_test, ci)


def test_top_level_layout() -> None:
    for name in ("loop_middleware", "integrations", "tests", "examples", "benchmarks",
                 "pyproject.toml", "tox.ini", "README.md", ".ci/run"):
        assert (ROOT / name).exists(), name
