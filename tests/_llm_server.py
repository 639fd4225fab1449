"""A loopback fake of an OpenAI-compatible chat-completions endpoint, for offline LLM tests.

``http.server`` on 127.0.0.1 in a background thread. It replays recorded responses in order,
one per ``POST .../chat/completions``, and keeps every request body it received so a test can
check what the client sent (re-asks, sampled threads). A response is either the assistant's
message content (a string, wrapped in a ``chat.completion`` object) or a full recorded JSON
object (a dict with ``"status"`` and ``"body"``, sent as is). When the recording runs out the
server answers 500, so an unexpected extra request fails loudly.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

Recorded = str | dict[str, Any]


def completion(content: str, model: str = "fake-model", n: int = 0) -> dict[str, Any]:
    """A ``chat.completion`` JSON object as the OpenAI API returns it."""
    return {
        "id": f"chatcmpl-{n}",
        "object": "chat.completion",
        "created": 1_767_225_600,
        "model": model,
        "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                     "message": {"role": "assistant", "content": content}}],
        "usage": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120},
    }


class FakeChatServer:
    """Replays ``responses`` to chat-completions requests. Use as a context manager."""

    def __init__(self, responses: Sequence[Recorded]):
        self._responses = list(responses)
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # quiet
                return

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                status, payload = owner._next(self.path, body)
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.02}, daemon=True)

    def _next(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        with self._lock:
            if not path.rstrip("/").endswith("/chat/completions"):
                return 404, {"error": {"message": f"no route {path}", "type": "not_found"}}
            self.requests.append(body)
            if not self._responses:
                return 500, {"error": {"message": "no recorded response left", "type": "server_error"}}
            rec = self._responses.pop(0)
            if isinstance(rec, str):
                return 200, completion(rec, body.get("model", "fake-model"), len(self.requests))
            return int(rec.get("status", 200)), rec["body"]

    @property
    def base_url(self) -> str:
        """The ``base_url`` to give ``openai.OpenAI``."""
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/v1"

    def __enter__(self) -> FakeChatServer:
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
