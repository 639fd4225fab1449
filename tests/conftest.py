"""Test fixtures: SQLite files, a real PostgreSQL server started for the session."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from loop_middleware import Store
from loop_middleware.prompts import default_registry


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


class PgServer:
    """A real PostgreSQL server in a temporary directory (stop/start it to inject faults)."""

    def __init__(self, bindir: Path, base: Path, prefix: list[str], port: int) -> None:
        self.bindir, self.base, self.prefix, self.port = bindir, base, prefix, port
        self.data, self.sock = base / "data", base / "sock"
        self.url = f"postgresql+psycopg://loop@127.0.0.1:{port}/postgres"

    def _ctl(self, *args: str) -> None:
        subprocess.run([*self.prefix, str(self.bindir / "pg_ctl"), "-D", str(self.data), *args],
                       check=True, capture_output=True, timeout=120)

    def init(self) -> None:
        subprocess.run(
            [*self.prefix, str(self.bindir / "initdb"), "-D", str(self.data), "-U", "loop",
             "-A", "trust", "-E", "UTF8", "--locale=C.UTF-8"],
            check=True, capture_output=True, timeout=120,
        )

    def start(self) -> None:
        self._ctl("-l", str(self.base / "log"), "-w", "-o",
                  f"-p {self.port} -k {self.sock} -c listen_addresses=127.0.0.1 -c fsync=off",
                  "start")

    def stop(self) -> None:
        self._ctl("-m", "fast", "-w", "stop")


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """A real PostgreSQL server on loopback, started for this test session.

    Runs ``initdb`` + ``pg_ctl`` in a temporary directory (as the ``postgres`` user when we are
    root). Skips with a reason only when no server can be started locally, and never in CI
    (``CI=true``), where it fails.
    """
    bindir = _pg_bin()

    def unavailable(reason: str) -> None:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is required in CI: {reason}")
        pytest.skip(f"no local PostgreSQL server: {reason}")

    if bindir is None:
        unavailable("initdb not found (apt-get install postgresql)")
        return
    base = Path(tempfile.mkdtemp(prefix="loop-pg-"))
    (base / "sock").mkdir()
    prefix: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(base, "postgres")
        shutil.chown(base / "sock", "postgres")
        prefix = ["runuser", "-u", "postgres", "--"]
    server = PgServer(bindir, base, prefix, _free_port())
    try:
        server.init()
        server.start()
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
        out = getattr(exc, "stderr", b"") or b""
        unavailable(f"{exc}: {out.decode(errors='replace')[-500:]}")
        return
    try:
        yield server
    finally:
        subprocess.run([*prefix, str(bindir / "pg_ctl"), "-D", str(server.data), "-m", "immediate", "stop"],
                       capture_output=True, timeout=60, check=False)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_url(pg_server: PgServer) -> str:
    """The URL of the session's PostgreSQL server (``$LOOP_TEST_POSTGRES_URL`` is not used:
    tests stop and start the server they own)."""
    return pg_server.url


def new_pg_database(base_url: str) -> str:
    """A fresh, empty database on the server of ``base_url``."""
    import psycopg

    name = f"loop_test_{os.getpid()}_{next(_counter)}"
    dsn = base_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return base_url.rsplit("/", 1)[0] + f"/{name}"


_counter = iter(range(10**9))


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each store test runs against a SQLite file and a real PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'loop.db'}"
    return new_pg_database(request.getfixturevalue("postgres_url"))


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'loop.db'}"


@pytest.fixture(autouse=True)
def _clean_prompt_registry() -> Iterator[None]:
    default_registry.clear()
    yield
    default_registry.clear()


def wait_for(predicate, timeout: float = 10.0) -> bool:  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def reopen(url: str) -> Store:
    """A new Store on the same database: what lands on disk, not in our memory."""
    return Store(url)
