"""Validate HTTP requests against GitHub's official REST API description (OpenAPI 3.0).

The description ships in the npm package ``@octokit/openapi`` (``generated/api.github.com.json``
and ``generated/ghes-<version>.json``); CI installs it with
``npm install --no-save --no-audit --no-fund --prefix . @octokit/openapi@23.0.2``. It is not
vendored: it is 13 MB per file.

A request passes when its method and path match an operation (path templating, with
``x-multi-segment`` parameters allowed to contain ``/``), its path and query parameters are
declared and valid against their schemas (required ones present, no undeclared ones), and its JSON
body validates against the operation's ``requestBody`` schema with ``$ref`` s into
``#/components/...`` resolved and OpenAPI's ``nullable`` mapped to JSON Schema.
"""

from __future__ import annotations

import copy
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import jsonschema

SPEC_ENV = "LOOP_GITHUB_OPENAPI"
SPEC_RELATIVE = Path("node_modules/@octokit/openapi/generated/api.github.com.json")
INSTALL_HINT = (
    "npm install --no-save --no-audit --no-fund --prefix . @octokit/openapi@23.0.2 "
    f"(in the repository root), or set ${SPEC_ENV} to the path of api.github.com.json"
)
_METHODS = ("get", "put", "post", "delete", "patch", "head", "options")


class SpecViolation(AssertionError):
    """A request that GitHub's REST API description does not allow."""


def find_spec_files(repo_root: Path) -> list[Path]:
    """The dotcom description, plus the newest GHES one beside it, or ``[]`` when not installed."""
    env = os.environ.get(SPEC_ENV)
    candidates = (
        [Path(env)] if env else [repo_root / SPEC_RELATIVE, repo_root.parent / SPEC_RELATIVE]
    )
    for main in candidates:
        if main.is_file():
            ghes = sorted(
                main.parent.glob("ghes-*.json"),
                key=lambda p: tuple(int(x) for x in re.findall(r"\d+", p.stem)),
            )
            ghes = [p for p in ghes if not p.name.endswith(".deref.json")]
            return [main, *ghes[-1:]]
    return []


@dataclass(frozen=True)
class _Op:
    template: str
    method: str
    regex: re.Pattern[str]
    names: tuple[str, ...]
    literal_len: int
    operation: dict[str, Any]


class OpenAPIValidator:
    """Validates requests against one OpenAPI document."""

    def __init__(self, spec: dict[str, Any], name: str = "spec") -> None:
        self.spec = spec
        self.name = name
        self._ops: list[_Op] = []
        for template, item in spec["paths"].items():
            shared = item.get("parameters", [])
            for method in _METHODS:
                if method not in item:
                    continue
                op = dict(item[method])
                op["parameters"] = [self.resolve(p) for p in [*shared, *op.get("parameters", [])]]
                multi = {
                    p["name"]
                    for p in op["parameters"]
                    if p.get("in") == "path" and p.get("x-multi-segment")
                }
                names: list[str] = []
                pattern = ""
                for piece in re.split(r"(\{[^}]+\})", template):
                    if piece.startswith("{"):
                        nm = piece[1:-1]
                        names.append(nm)
                        pattern += "(.+)" if nm in multi else "([^/]+)"
                    else:
                        pattern += re.escape(piece)
                literal = len(re.sub(r"\{[^}]+\}", "", template))
                self._ops.append(
                    _Op(
                        template,
                        method.upper(),
                        re.compile(pattern + r"\Z"),
                        tuple(names),
                        literal,
                        op,
                    )
                )

    @classmethod
    def from_file(cls, path: Path) -> OpenAPIValidator:
        """Load a description file."""
        with path.open(encoding="utf-8") as fh:
            return cls(json.load(fh), name=path.name)

    def resolve(self, node: Any) -> Any:
        """Follow a ``{"$ref": "#/components/..."}`` (one level)."""
        while isinstance(node, dict) and "$ref" in node:
            ref = node["$ref"]
            if not ref.startswith("#/"):
                raise SpecViolation(f"external $ref not supported: {ref}")
            target: Any = self.spec
            for part in ref[2:].split("/"):
                target = target[part.replace("~1", "/").replace("~0", "~")]
            node = target
        return node

    def _inline(self, schema: Any, depth: int = 0) -> Any:
        """Inline every ``$ref`` and translate OpenAPI 3.0 keywords to JSON Schema."""
        if depth > 40:  # recursive schemas: stop inlining, accept anything deeper
            return {}
        schema = self.resolve(schema)
        if isinstance(schema, list):
            return [self._inline(s, depth + 1) for s in schema]
        if not isinstance(schema, dict):
            return schema
        out: dict[str, Any] = {}
        for key, value in schema.items():
            if key in (
                "example",
                "examples",
                "description",
                "xml",
                "externalDocs",
                "deprecated",
                "readOnly",
                "writeOnly",
                "discriminator",
            ) or key.startswith("x-"):
                continue
            if key in ("properties", "patternProperties"):
                out[key] = {k: self._inline(v, depth + 1) for k, v in value.items()}
            elif key in ("items", "additionalProperties", "not") and isinstance(value, dict):
                out[key] = self._inline(value, depth + 1)
            elif key in ("allOf", "anyOf", "oneOf"):
                out[key] = [self._inline(v, depth + 1) for v in value]
            else:
                out[key] = copy.deepcopy(value)
        if out.pop("nullable", False):
            if "type" in out:
                out["type"] = [out["type"], "null"]
            if "enum" in out:
                out["enum"] = [*out["enum"], None]
        return out

    def match(self, method: str, path: str) -> tuple[_Op, dict[str, str]]:
        """The most specific operation for ``method path`` and its decoded path parameters."""
        found: list[tuple[_Op, dict[str, str]]] = []
        for op in self._ops:
            if op.method != method.upper():
                continue
            m = op.regex.match(path)
            if m:
                found.append(
                    (op, {n: unquote(v) for n, v in zip(op.names, m.groups(), strict=True)})
                )
        if not found:
            raise SpecViolation(f"[{self.name}] no operation {method.upper()} {path}")
        found.sort(key=lambda f: f[0].literal_len, reverse=True)
        return found[0]

    def _check_value(self, where: str, param: dict[str, Any], raw: str) -> None:
        schema = self._inline(param.get("schema", {}))
        value: Any = raw
        kind = schema.get("type")
        if kind == "integer":
            if not re.fullmatch(r"-?\d+", raw):
                raise SpecViolation(
                    f"[{self.name}] {where} {param['name']}={raw!r} is not an integer"
                )
            value = int(raw)
        elif kind == "boolean":
            if raw not in ("true", "false"):
                raise SpecViolation(
                    f"[{self.name}] {where} {param['name']}={raw!r} is not a boolean"
                )
            value = raw == "true"
        elif kind == "array":
            value = raw.split(",")
        try:
            jsonschema.Draft4Validator(schema).validate(value)
        except jsonschema.ValidationError as exc:
            raise SpecViolation(
                f"[{self.name}] {where} parameter {param['name']}={raw!r}: {exc.message}"
            ) from None

    def validate(
        self,
        method: str,
        path: str,
        query: dict[str, list[str]],
        body: bytes | None,
        content_type: str | None = None,
    ) -> str:
        """Raise :class:`SpecViolation` unless the request is described; return its operationId."""
        op, path_params = self.match(method, path)
        operation = op.operation
        params = operation["parameters"]
        for p in params:
            if p["in"] == "path":
                self._check_value("path", p, path_params[p["name"]])
        declared = {p["name"]: p for p in params if p["in"] == "query"}
        for name, values in query.items():
            if name not in declared:
                raise SpecViolation(
                    f"[{self.name}] {op.method} {op.template}: undeclared query parameter {name!r}"
                )
            for v in values:
                self._check_value("query", declared[name], v)
        for name, p in declared.items():
            if p.get("required") and name not in query:
                raise SpecViolation(
                    f"[{self.name}] {op.method} {op.template}: missing required query parameter {name!r}"
                )

        rb = self.resolve(operation.get("requestBody"))
        has_body = bool(body and body.strip())
        if rb is None:
            if has_body:
                raise SpecViolation(
                    f"[{self.name}] {op.method} {op.template} takes no request body"
                )
            return str(operation.get("operationId"))
        if not has_body:
            if rb.get("required"):
                raise SpecViolation(f"[{self.name}] {op.method} {op.template} requires a JSON body")
            return str(operation.get("operationId"))
        media = rb.get("content", {}).get("application/json")
        if media is None:
            raise SpecViolation(f"[{self.name}] {op.method} {op.template} takes no JSON body")
        if content_type is not None and not content_type.startswith("application/json"):
            raise SpecViolation(
                f"[{self.name}] body sent as {content_type!r}, not application/json"
            )
        try:
            payload = json.loads(body or b"")
        except ValueError as exc:
            raise SpecViolation(f"[{self.name}] body is not JSON: {exc}") from None
        schema = self._inline(media.get("schema", {}))
        errors = sorted(
            jsonschema.Draft4Validator(schema).iter_errors(payload), key=lambda e: list(e.path)
        )
        if errors:
            first = errors[0]
            where = "/".join(str(p) for p in first.path) or "(root)"
            raise SpecViolation(
                f"[{self.name}] {op.method} {op.template} ({operation.get('operationId')}): "
                f"body at {where}: {first.message}"
            )
        return str(operation.get("operationId"))


class MultiValidator:
    """A request must pass every loaded description (dotcom and GitHub Enterprise Server)."""

    def __init__(self, validators: list[OpenAPIValidator]) -> None:
        self.validators = validators

    def validate(
        self,
        method: str,
        path: str,
        query: dict[str, list[str]],
        body: bytes | None,
        content_type: str | None = None,
    ) -> str:
        """Validate against each; return the operationId."""
        op = ""
        for v in self.validators:
            op = v.validate(method, path, query, body, content_type)
        return op
