"""Shared fixtures: the catalogue's database (SQLite or a throwaway PostgreSQL), origin settings,
a running origin on a loopback port, and edge nodes.

The PostgreSQL cluster is started once per test run, only when a test asks for it:

    <tmp>/pg/            owned by the `postgres` user when the run is root (initdb refuses root)
        data/            initdb --auth-host=scram-sha-256, fsync off (nothing here must survive)
        socket/          the Unix socket (never /var/run/postgresql: the system cluster's)
        log              the server's log, shown when start-up fails

Each test that uses it gets a database of its own (`CREATE DATABASE`, dropped afterwards).
`CACHENET_TEST_PG_URL` (a URL whose user may create databases) replaces the cluster.
"""

import getpass
import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, NoReturn

import pytest
from aiohttp.test_utils import TestServer
from sqlalchemy.engine import make_url

from registry.app import create_app
from registry.catalogue import sqlite_url
from registry.config import OriginSettings

OPERATOR_TOKEN = "test-operator-token"
# Modules that run against both databases: pytestmark = pytest.mark.parametrize("catalogue_backend",
# DATABASES, indirect=True).
DATABASES: Final = ("sqlite", "postgresql")
PG_URL_ENV: Final = "CACHENET_TEST_PG_URL"
_PG_OS_USER: Final = "postgres"
_PG_START_TIMEOUT_S: Final = 60
_PG_PORT_ATTEMPTS: Final = 3


@dataclass(slots=True)
class PostgresServer:
    """A PostgreSQL server the tests may create databases on (admin URL in SQLAlchemy form)."""

    admin_url: str
    _counter: int = field(default=0, init=False)

    def create_database(self) -> str:
        """A new empty database; returns its SQLAlchemy URL."""
        self._counter += 1
        name = f"cachenet_test_{os.getpid()}_{self._counter}_{secrets.token_hex(3)}"
        self._admin(f'CREATE DATABASE "{name}"')
        return make_url(self.admin_url).set(database=name).render_as_string(hide_password=False)

    def drop_database(self, url: str) -> None:
        """Drop a database made by `create_database`, closing any connection left open."""
        self._admin(f'DROP DATABASE IF EXISTS "{make_url(url).database}" WITH (FORCE)')

    def _admin(self, sql: str) -> None:
        import psycopg

        url = make_url(self.admin_url)
        with psycopg.connect(
            host=url.host,
            port=url.port,
            user=url.username,
            password=url.password,
            dbname=url.database or "postgres",
            autocommit=True,
        ) as conn:
            conn.execute(sql.encode())


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL server for the whole run: `CACHENET_TEST_PG_URL`, else a throwaway cluster.

    Skips when no PostgreSQL binaries are installed, except under CI (`CI` set), which fails.
    """
    given = os.environ.get(PG_URL_ENV)
    if given:
        yield PostgresServer(_with_psycopg_driver(given))
        return
    bindir = _postgres_bindir()
    if bindir is None:
        _skip_or_fail("PostgreSQL (initdb, pg_ctl) is not installed: apt-get install postgresql")
    as_user = _PG_OS_USER if os.geteuid() == 0 else None
    if as_user is not None and (shutil.which("runuser") is None or not _user_exists(as_user)):
        _skip_or_fail(f"running as root needs runuser and a {as_user!r} user to start PostgreSQL")
    # /tmp, not $TMPDIR, for root: the postgres user must be able to reach the folder.
    root = Path(tempfile.mkdtemp(prefix="cachenet-pg-", dir="/tmp" if as_user else None))
    try:
        with _running_cluster(bindir, root, as_user) as url:
            yield PostgresServer(url)
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def catalogue_backend(request: pytest.FixtureRequest) -> str:
    """The catalogue's database: `sqlite` unless the test parametrises it (indirect=True)."""
    backend = str(getattr(request, "param", "sqlite"))
    assert backend in DATABASES, backend
    return backend


@pytest.fixture
def catalogue_url(catalogue_backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    """A SQLAlchemy URL of an empty catalogue database on the chosen backend."""
    if catalogue_backend == "sqlite":
        yield sqlite_url(tmp_path / "catalogue.sqlite")
        return
    server: PostgresServer = request.getfixturevalue("postgres_server")
    url = server.create_database()
    try:
        yield url
    finally:
        server.drop_database(url)


@pytest.fixture
def origin_settings(tmp_path: Path, catalogue_backend: str, request: pytest.FixtureRequest) -> OriginSettings:
    """Origin settings with a data folder in tmp_path and a known token.

    On SQLite the origin keeps its default catalogue file in the data folder; on
    PostgreSQL `db_url` names a fresh database.
    """
    db_url = None if catalogue_backend == "sqlite" else request.getfixturevalue("catalogue_url")
    return OriginSettings(data_dir=tmp_path / "origin", db_url=db_url, token=OPERATOR_TOKEN, fsync=False)


@pytest.fixture
async def origin_server(
    origin_settings: OriginSettings, aiohttp_server: Callable[..., "AsyncIterator[TestServer]"]
) -> TestServer:
    """A real origin server on 127.0.0.1 with a kernel-chosen port."""
    return await aiohttp_server(create_app(origin_settings))  # type: ignore[misc, no-any-return]


@pytest.fixture
def edge_factory(
    tmp_path: Path, aiohttp_server: Callable[..., "AsyncIterator[TestServer]"]
) -> Callable[..., "AsyncIterator[TestServer]"]:
    """Start edge nodes (real servers on loopback) with the given settings overrides."""
    from cachenet.edge.app import create_app as create_edge_app
    from cachenet.edge.config import EdgeSettings

    counter = iter(range(1, 1000))

    async def start(*, origin: TestServer, **overrides: object) -> TestServer:
        n = next(counter)
        node_id = str(overrides.pop("node_id", f"edge-{n}"))
        data_dir = overrides.pop("data_dir", tmp_path / node_id)
        settings = EdgeSettings(
            node_id=node_id,
            data_dir=data_dir,  # type: ignore[arg-type]
            origin_url=str(origin.make_url("")).rstrip("/"),
            token=OPERATOR_TOKEN,
            fsync=False,
            **overrides,  # type: ignore[arg-type]
        )
        return await aiohttp_server(create_edge_app(settings))  # type: ignore[misc, no-any-return]

    return start  # type: ignore[return-value]


def metric(server: TestServer, name: str, **labels: str) -> float:
    """The value of a Prometheus sample of a running server's app (0 when absent)."""
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from cachenet.edge.keys import cache_key

    text = generate_latest(server.app[cache_key].metrics.registry).decode()
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def _skip_or_fail(reason: str) -> NoReturn:
    # CI installs PostgreSQL (.ci/run): there a missing server is a broken build, not a skip.
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so the PostgreSQL tests must run)", pytrace=False)
    pytest.skip(reason)


def _postgres_bindir() -> Path | None:
    on_path = shutil.which("initdb")
    if on_path and shutil.which("pg_ctl"):
        return Path(on_path).parent
    # Debian keeps the server binaries off PATH, one folder per major version: take the newest.
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[4]))
    return Path(found[-1]).parent if found else None


@contextmanager
def _running_cluster(bindir: Path, root: Path, as_user: str | None) -> Iterator[str]:
    """initdb into `root/data`, start on a free loopback port, yield the admin URL, stop."""
    data, sock, log, pwfile = root / "data", root / "socket", root / "log", root / "pwfile"
    superuser, password = as_user or getpass.getuser(), secrets.token_hex(16)
    sock.mkdir()
    pwfile.write_text(password + "\n")
    if as_user is not None:
        for p in (root, sock, pwfile):
            shutil.chown(p, as_user)

    def pg(tool: str, *args: str) -> "subprocess.CompletedProcess[str]":
        cmd = [str(bindir / tool), *args]
        if as_user is not None:
            cmd = ["runuser", "-u", as_user, "--", *cmd]
        # cwd: the postgres user may not be allowed into the repository folder.
        return subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=120)

    done = pg(
        "initdb",
        "-D",
        str(data),
        "-U",
        superuser,
        f"--pwfile={pwfile}",
        "--auth-local=trust",
        "--auth-host=scram-sha-256",
        "--encoding=UTF8",
        "--no-locale",
        "--no-sync",
        "--no-instructions",
    )
    pwfile.unlink()
    if done.returncode != 0:
        raise RuntimeError(f"initdb failed ({done.returncode}): {done.stdout}{done.stderr}")
    for attempt in range(_PG_PORT_ATTEMPTS):
        port = _free_port()
        options = (
            f"-c listen_addresses=127.0.0.1 -p {port} -k {sock} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        done = pg(
            "pg_ctl", "start", "-w", "-t", str(_PG_START_TIMEOUT_S), "-D", str(data), "-l", str(log), "-o", options
        )
        if done.returncode == 0:
            break
        if attempt == _PG_PORT_ATTEMPTS - 1:  # else the port was taken in between: try another
            server_log = log.read_text(errors="replace") if log.exists() else ""
            raise RuntimeError(f"pg_ctl start failed: {done.stdout}{done.stderr}\n{server_log}")
    try:
        yield f"postgresql+psycopg://{superuser}:{password}@127.0.0.1:{port}/postgres"
    finally:
        pg("pg_ctl", "stop", "-D", str(data), "-m", "immediate", "-w")


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _with_psycopg_driver(url: str) -> str:
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)
