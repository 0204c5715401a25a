"""Shared fixtures: a real PostgreSQL, a fresh database per test.

`FRESHD_TEST_DATABASE_URL` names a server the tests may create databases on
(CI sets it to the machine's PostgreSQL).  Without it, the suite starts its own
throwaway server with the bundled `pgserver` binaries, so a fresh machine with
only Python can run everything.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from freshd.embedded_pg import scratch_database, throwaway_postgres, throwaway_valkey


@pytest.fixture(scope="session")
def pg_server_url() -> Iterator[str]:
    url = os.environ.get("FRESHD_TEST_DATABASE_URL")
    if url:
        yield url
        return
    with throwaway_postgres("freshd-test-pg-") as started:
        yield started


@pytest.fixture
def database_url(pg_server_url: str) -> Iterator[str]:
    """A brand-new, empty database for one test; dropped afterwards."""
    with scratch_database(pg_server_url, "freshd_test_") as url:
        yield url


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
    with throwaway_valkey("freshd-test-valkey-") as started:
        yield started
