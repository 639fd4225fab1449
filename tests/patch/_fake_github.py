"""A loopback GitHub (Enterprise-style ``/api/v3``) speaking just enough REST for the PR flow.

Every request is first validated against GitHub's official OpenAPI description (see
``_openapi.py``); a request the description does not allow is recorded in ``violations`` and
answered ``400``, so a client bug fails the test instead of passing against a lenient fake.

State is a tiny git model: commits are ``{path: text}`` snapshots, branches point at commits,
blob shas are real git blob hashes. Failures can be injected per request with :meth:`fail`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

from tests.patch._openapi import MultiValidator, SpecViolation

PREFIX = "/api/v3"


def blob_sha(text: str) -> str:
    data = text.encode("utf-8")
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, list[str]]
    body: Any
    operation: str | None
    status: int = 0


@dataclass
class _Failure:
    method: str
    pattern: re.Pattern[str]
    status: int
    body: dict[str, Any]
    headers: dict[str, str]
    times: int


@dataclass
class FakeRepo:
    owner: str
    name: str
    default_branch: str = "main"
    commits: dict[str, dict[str, str]] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    pulls: list[dict[str, Any]] = field(default_factory=list)
    counter: int = 0

    def commit(self, files: dict[str, str], parent: str | None, message: str) -> str:
        self.counter += 1
        sha = hashlib.sha1(
            f"{parent}:{message}:{self.counter}:{sorted(files.items())}".encode()
        ).hexdigest()
        self.commits[sha] = dict(files)
        return sha


class FakeGitHub:
    """Run with ``with FakeGitHub(validator, token) as gh: gh.api_url ...``."""

    def __init__(self, validator: MultiValidator, token: str) -> None:
        self.validator = validator
        self.token = token
        self.repos: dict[str, FakeRepo] = {}
        self.requests: list[Recorded] = []
        self.violations: list[str] = []
        self.auth_headers: list[str] = []
        self._failures: list[_Failure] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.root = f"http://127.0.0.1:{self.port}"
        self.api_url = self.root + PREFIX
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name="fake-github", daemon=True
        )

    def __enter__(self) -> FakeGitHub:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    # -- setup -------------------------------------------------------------------------------

    def add_repo(
        self, full_name: str, files: dict[str, str], default_branch: str = "main"
    ) -> FakeRepo:
        owner, name = full_name.split("/")
        repo = FakeRepo(owner, name, default_branch)
        repo.branches[default_branch] = repo.commit(files, None, "initial")
        self.repos[full_name] = repo
        return repo

    def fail(
        self,
        method: str,
        path_regex: str,
        status: int,
        body: dict[str, Any],
        headers: dict[str, str] | None = None,
        times: int = 1,
    ) -> None:
        """Answer the next ``times`` requests matching ``method`` and the path regex with an error."""
        self._failures.append(
            _Failure(method, re.compile(path_regex), status, body, headers or {}, times)
        )

    def ops(self) -> list[str]:
        """The operationIds served, in order."""
        return [r.operation or "?" for r in self.requests]

    # -- objects -----------------------------------------------------------------------------

    def _repo_json(self, repo: FakeRepo) -> dict[str, Any]:
        full = f"{repo.owner}/{repo.name}"
        return {
            "id": 1,
            "node_id": "R_1",
            "name": repo.name,
            "full_name": full,
            "private": True,
            "owner": {
                "login": repo.owner,
                "id": 2,
                "type": "Organization",
                "url": f"{self.api_url}/users/{repo.owner}",
            },
            "html_url": f"{self.root}/{full}",
            "url": f"{self.api_url}/repos/{full}",
            "default_branch": repo.default_branch,
        }

    def _pr_json(self, repo: FakeRepo, pr: dict[str, Any]) -> dict[str, Any]:
        full = f"{repo.owner}/{repo.name}"
        n = pr["number"]

        def side(ref: str) -> dict[str, Any]:
            return {
                "ref": ref,
                "label": f"{repo.owner}:{ref}",
                "sha": repo.branches.get(ref, "0" * 40),
                "repo": self._repo_json(repo),
            }

        return {
            "id": 1000 + n,
            "node_id": f"PR_{n}",
            "number": n,
            "state": pr["state"],
            "title": pr["title"],
            "body": pr["body"],
            "draft": pr["draft"],
            "merged": False,
            "url": f"{self.api_url}/repos/{full}/pulls/{n}",
            "html_url": f"{self.root}/{full}/pull/{n}",
            "issue_url": f"{self.api_url}/repos/{full}/issues/{n}",
            "head": side(pr["head"]),
            "base": side(pr["base"]),
            "labels": [self._label_json(repo, x) for x in pr["labels"]],
            "user": {"login": "loop-bot", "id": 3},
        }

    def _label_json(self, repo: FakeRepo, name: str) -> dict[str, Any]:
        return {
            "id": abs(hash(name)) % 10**6,
            "name": name,
            "color": "ededed",
            "url": f"{self.api_url}/repos/{repo.owner}/{repo.name}/labels/{quote(name)}",
        }

    def _content_json(
        self, repo: FakeRepo, path: str, ref: str, text: str, with_content: bool = True
    ) -> dict[str, Any]:
        full = f"{repo.owner}/{repo.name}"
        out: dict[str, Any] = {
            "type": "file",
            "encoding": "base64",
            "size": len(text.encode()),
            "name": path.rsplit("/", 1)[-1],
            "path": path,
            "sha": blob_sha(text),
            "url": f"{self.api_url}/repos/{full}/contents/{path}?ref={quote(ref, safe='')}",
            "git_url": f"{self.api_url}/repos/{full}/git/blobs/{blob_sha(text)}",
            "html_url": f"{self.root}/{full}/blob/{ref}/{path}",
            "download_url": f"{self.root}/raw/{full}/{ref}/{path}",
        }
        if with_content:
            out["content"] = base64.encodebytes(text.encode()).decode()
        return out

    # -- routing -----------------------------------------------------------------------------

    def handle(
        self, method: str, path: str, query: dict[str, list[str]], body: Any, auth: str | None
    ) -> tuple[int, Any, dict[str, str]]:
        if auth not in (f"token {self.token}", f"Bearer {self.token}"):
            return (
                401,
                {"message": "Bad credentials", "documentation_url": "https://docs.github.com/rest"},
                {},
            )
        for f in self._failures:
            if f.times > 0 and f.method == method and f.pattern.search(path):
                f.times -= 1
                return f.status, f.body, f.headers
        m = re.match(r"^/repos/([^/]+)/([^/]+)(/.*)?$", path)
        if not m or f"{m.group(1)}/{m.group(2)}" not in self.repos:
            return 404, {"message": "Not Found"}, {}
        repo = self.repos[f"{m.group(1)}/{m.group(2)}"]
        rest = m.group(3) or ""
        q1 = {k: v[0] for k, v in query.items()}

        if method == "GET" and rest == "":
            return 200, self._repo_json(repo), {}
        if method == "GET" and rest == "/pulls":
            found = [
                p
                for p in repo.pulls
                if q1.get("state", "open") in (p["state"], "all")
                and ("head" not in q1 or q1["head"] == f"{repo.owner}:{p['head']}")
                and ("base" not in q1 or q1["base"] == p["base"])
            ]
            return 200, [self._pr_json(repo, p) for p in found], {}
        if method == "GET" and rest.startswith("/branches/"):
            name = rest[len("/branches/") :]
            if name not in repo.branches:
                return 404, {"message": "Branch not found"}, {}
            sha = repo.branches[name]
            return (
                200,
                {
                    "name": name,
                    "commit": {
                        "sha": sha,
                        "url": f"{self.api_url}/repos/{repo.owner}/{repo.name}/commits/{sha}",
                    },
                    "protected": False,
                },
                {},
            )
        if method == "POST" and rest == "/git/refs":
            ref, sha = body["ref"], body["sha"]
            if not ref.startswith("refs/heads/") or sha not in repo.commits:
                return 422, {"message": "Reference update failed"}, {}
            name = ref[len("refs/heads/") :]
            if name in repo.branches:
                return 422, {"message": "Reference already exists"}, {}
            repo.branches[name] = sha
            url = f"{self.api_url}/repos/{repo.owner}/{repo.name}/git/{ref}"
            return (
                201,
                {
                    "ref": ref,
                    "node_id": "REF_1",
                    "url": url,
                    "object": {"type": "commit", "sha": sha, "url": url},
                },
                {},
            )
        if rest.startswith("/contents/"):
            fpath = rest[len("/contents/") :]
            if method == "GET":
                ref = q1.get("ref", repo.default_branch)
                files = repo.commits.get(repo.branches.get(ref, ""), None)
                if files is None or fpath not in files:
                    return 404, {"message": "Not Found"}, {}
                return 200, self._content_json(repo, fpath, ref, files[fpath]), {}
            if method == "PUT":
                ref = body.get("branch", repo.default_branch)
                if ref not in repo.branches:
                    return 404, {"message": "Branch not found"}, {}
                files = dict(repo.commits[repo.branches[ref]])
                if fpath in files and body.get("sha") != blob_sha(files[fpath]):
                    return 409, {"message": f"{fpath} does not match {body.get('sha')}"}, {}
                if fpath not in files and body.get("sha"):
                    return 422, {"message": "sha wasn't supplied."}, {}
                created = fpath not in files
                files[fpath] = base64.b64decode(body["content"]).decode("utf-8")
                parent = repo.branches[ref]
                sha = repo.commit(files, parent, body["message"])
                repo.branches[ref] = sha
                commit = {
                    "sha": sha,
                    "url": f"{self.api_url}/repos/{repo.owner}/{repo.name}/git/commits/{sha}",
                    "html_url": f"{self.root}/{repo.owner}/{repo.name}/commit/{sha}",
                    "message": body["message"],
                    "tree": {
                        "sha": "1" * 40,
                        "url": f"{self.api_url}/repos/{repo.owner}/{repo.name}/git/trees/{'1' * 40}",
                    },
                    "parents": [
                        {
                            "sha": parent,
                            "url": f"{self.api_url}/repos/{repo.owner}/{repo.name}/git/commits/{parent}",
                        }
                    ],
                }
                content = self._content_json(repo, fpath, ref, files[fpath], with_content=False)
                return (201 if created else 200), {"content": content, "commit": commit}, {}
        if method == "POST" and rest == "/pulls":
            head, base = body["head"], body["base"]
            if head not in repo.branches or base not in repo.branches:
                return (
                    422,
                    {
                        "message": "Validation Failed",
                        "errors": [{"resource": "PullRequest", "field": "head", "code": "invalid"}],
                    },
                    {},
                )
            if any(p["head"] == head and p["state"] == "open" for p in repo.pulls):
                return (
                    422,
                    {
                        "message": "Validation Failed",
                        "errors": [
                            {
                                "resource": "PullRequest",
                                "code": "custom",
                                "message": f"A pull request already exists for {repo.owner}:{head}.",
                            }
                        ],
                    },
                    {},
                )
            pr = {
                "number": len(repo.pulls) + 1,
                "state": "open",
                "title": body.get("title"),
                "body": body.get("body"),
                "draft": bool(body.get("draft", False)),
                "head": head,
                "base": base,
                "labels": [],
            }
            repo.pulls.append(pr)
            return 201, self._pr_json(repo, pr), {}
        im = re.fullmatch(r"/issues/(\d+)(/labels)?", rest)
        if im:
            n = int(im.group(1))
            prs = [p for p in repo.pulls if p["number"] == n]
            if not prs:
                return 404, {"message": "Not Found"}, {}
            pr = prs[0]
            if im.group(2) and method == "POST":
                names = body["labels"] if isinstance(body, dict) else body
                pr["labels"] += [x for x in names if x not in pr["labels"]]
                return 200, [self._label_json(repo, x) for x in pr["labels"]], {}
            if not im.group(2) and method in ("GET", "PATCH"):
                if method == "PATCH" and "labels" in body:
                    pr["labels"] = list(dict.fromkeys(body["labels"]))
                issue = self._pr_json(repo, pr)
                issue["pull_request"] = {"url": issue["url"], "html_url": issue["html_url"]}
                issue["url"] = issue["issue_url"]
                return 200, issue, {}
        return 404, {"message": f"fake has no route for {method} {path}"}, {}

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body are two writes: without TCP_NODELAY each keep-alive response
            # waits ~40 ms for a delayed ACK.
            disable_nagle_algorithm = True

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                return

            def _serve(self) -> None:
                parts = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                query = parse_qs(parts.query, keep_blank_values=True)
                status: int
                payload: Any
                headers: dict[str, str] = {}
                rec = Recorded(self.command, parts.path, query, None, None)
                if not parts.path.startswith(PREFIX + "/"):
                    status, payload = 404, {"message": f"not under {PREFIX}"}
                else:
                    path = parts.path[len(PREFIX) :]
                    try:
                        rec.body = json.loads(raw) if raw.strip() else None
                    except ValueError:
                        rec.body = raw
                    with fake._lock:
                        fake.auth_headers.append(self.headers.get("Authorization") or "")
                        try:
                            rec.operation = fake.validator.validate(
                                self.command, path, query, raw, self.headers.get("Content-Type")
                            )
                        except SpecViolation as exc:
                            fake.violations.append(str(exc))
                            status, payload = 400, {"message": f"spec violation: {exc}"}
                        else:
                            status, payload, headers = fake.handle(
                                self.command,
                                path,
                                query,
                                rec.body,
                                self.headers.get("Authorization"),
                            )
                rec.status = status
                fake.requests.append(rec)
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

        return Handler
