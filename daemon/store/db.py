"""The PostgreSQL store: a bounded set of psycopg connections driven from trio.

psycopg 3 is blocking here, so every database call runs in a worker thread via
``trio.to_thread.run_sync`` under one ``CapacityLimiter``.  The limiter *is*
the pool size: a thread holds one connection for exactly one call, so
connections never outnumber threads.  (psycopg_pool's sync pool would add
maintenance threads of its own, and its async pool is asyncio-only.)

Calls are plain functions ``fn(conn, *args)`` run inside one transaction:
``await store.call(records.write_page, ...)``.  SQL lives in the sibling
modules by concern (connections, records, jobs, activity).

Error handling: psycopg's OperationalError (server gone, connection refused,
admin shutdown) becomes ``StoreUnavailable`` and the connection is dropped;
the next call opens a fresh one.  Callers decide whether to retry.
"""

from __future__ import annotations

import copy
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Concatenate, ParamSpec, TypeVar

import psycopg
import structlog
import trio
from psycopg.rows import dict_row

from freshd import metrics, systemd
from freshd.errors import Fenced, StoreUnavailable
from freshd.secrets import Keyring
from freshd.store import migrate

P = ParamSpec("P")
T = TypeVar("T")

log = structlog.get_logger(__name__)

Connection = psycopg.Connection[dict[str, object]]

CONNECT_TIMEOUT = 5
RETRY_CAP = 30.0


@dataclass(frozen=True, slots=True)
class Fence:
    """What a connection's writes are checked against: this member still holds this lease epoch."""

    connection_id: int
    member: str
    epoch: int


def check_fence(conn: Connection, fence: Fence) -> None:
    """First statement of every fenced transaction.  FOR SHARE: a take-over (which bumps the epoch)
    waits for this transaction, so the write lands before it or not at all."""
    row = conn.execute(
        "SELECT 1 FROM leases WHERE connection_id = %s AND owner = %s AND epoch = %s FOR SHARE",
        (fence.connection_id, fence.member, fence.epoch),
    ).fetchone()
    if row is None:
        metrics.fencing_rejections_total.inc()
        raise Fenced(f"member {fence.member} no longer holds connection {fence.connection_id}'s lease "
                     f"(epoch {fence.epoch}): write refused")


class Store:
    """Opened by :func:`open_store`; shared by every actor."""

    def __init__(self, url: str, *, max_connections: int, keyring: Keyring | None = None) -> None:
        self.url = url
        # seals credentials and tokens (freshd.secrets); an in-memory key when none is given (tests)
        self.keyring = keyring or Keyring.ephemeral()
        self._limiter = trio.CapacityLimiter(max_connections)
        self._idle: list[Connection] = []
        self._closed = False
        self.available = True
        self._fence: Fence | None = None

    def fenced(self, fence: Fence) -> Store:
        """This store, with every call's transaction first checking `fence` (the connection's lease
        epoch): a member that lost the lease writes nothing, whatever it was doing.  A view sharing
        the pool, the limiter and the keyring."""
        view = copy.copy(self)
        view._fence = fence
        return view

    async def call(
        self, fn: Callable[Concatenate[Connection, P], T], /, *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Run ``fn(conn, *args, **kwargs)`` in one transaction on a worker thread.

        Not abandoned on cancellation: a commit in flight finishes (or fails)
        before the caller sees ``Cancelled``, so "committed" is never ambiguous
        from the caller's side.
        """
        if self._closed:
            raise StoreUnavailable("the store is closed")
        async with self._limiter:
            idle = self._idle.pop() if self._idle else None
            try:
                conn, result = await trio.to_thread.run_sync(self._run, idle, fn, args, kwargs)
            except StoreUnavailable:
                self._mark(available=False)
                raise
            self._mark(available=True)
            if self._closed:
                conn.close()
            else:
                self._idle.append(conn)
            return result

    async def call_retrying(
        self, fn: Callable[Concatenate[Connection, P], T], /, *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """`call`, waiting out a database outage with backoff (0.5 s doubling to 30 s) until cancelled.

        For writes that must not be lost to a blip (job progress, outcomes): every one of
        them is idempotent, so a retry after an ambiguous failure is safe.
        """
        delay = 0.5
        while True:
            try:
                return await self.call(fn, *args, **kwargs)
            except StoreUnavailable as exc:
                log.warning("store.retrying", retry_in=delay, error=str(exc))
                await trio.sleep(delay)
                delay = min(delay * 2, RETRY_CAP)

    def _run(
        self,
        conn: Connection | None,
        fn: Callable[..., T],
        args: tuple[object, ...],
        kwargs: dict[str, object],
    ) -> tuple[Connection, T]:
        try:
            if conn is None or conn.closed or conn.broken:
                conn = psycopg.connect(
                    self.url, row_factory=dict_row, connect_timeout=CONNECT_TIMEOUT,
                    options="-c search_path=freshd,public",
                )
            started = time.perf_counter()
            with conn.transaction():
                if self._fence is not None:
                    check_fence(conn, self._fence)
                result = fn(conn, *args, **kwargs)
            metrics.db_write_seconds.observe(time.perf_counter() - started)
            return conn, result
        except psycopg.OperationalError as exc:
            if conn is not None:
                conn.close()
            raise StoreUnavailable(f"database unavailable: {_one_line(exc)}") from exc
        except BaseException:
            # A statement error leaves the transaction rolled back; the connection is reusable
            # unless it broke, in which case the next call reconnects.
            if conn is not None and conn.broken:
                conn.close()
            raise

    def _mark(self, *, available: bool) -> None:
        if available != self.available:
            self.available = available
            metrics.store_up.set(1 if available else 0)
            if available:
                log.info("store.recovered")
                systemd.status("running: store recovered")
            else:
                log.warning("store.unavailable")
                systemd.status("degraded: the database is unavailable, retrying")

    async def ping(self) -> bool:
        try:
            await self.call(lambda conn: conn.execute("SELECT 1"))
        except StoreUnavailable:
            return False
        return True

    def close(self) -> None:
        self._closed = True
        while self._idle:
            self._idle.pop().close()


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


@asynccontextmanager
async def open_store(
    url: str, *, max_connections: int = 4, apply_migrations: bool = True, keyring: Keyring | None = None,
) -> AsyncIterator[Store]:
    """Open the store, apply pending migrations, and close every connection on exit."""
    store = Store(url, max_connections=max_connections, keyring=keyring)
    try:
        if apply_migrations:
            await trio.to_thread.run_sync(migrate.apply_migrations, url)
        metrics.store_up.set(1)
        yield store
    finally:
        store.close()
