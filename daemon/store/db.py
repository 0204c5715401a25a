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

Timeouts: every connection carries a server-side ``statement_timeout`` and
``lock_timeout`` ([store] in the config, 30 s); a statement stopped by either
becomes ``StoreTimeout`` (a StoreUnavailable: retried the same way).  A call
whose caller is cancelled (an admin request's timeout, shutdown) has its
statement cancelled server-side, and at shutdown ``set_stop_deadline`` bounds
even shielded final writes, so a lock held forever by another session cannot
hold the daemon past its stop deadline.
"""

from __future__ import annotations

import contextvars
import functools
import math
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Concatenate, ParamSpec, TypeVar, cast

import psycopg
import structlog
import trio
from psycopg.rows import dict_row

from freshd import metrics, systemd
from freshd.errors import Fenced, StoreTimeout, StoreUnavailable
from freshd.secrets import Keyring
from freshd.store import migrate

P = ParamSpec("P")
T = TypeVar("T")

log = structlog.get_logger(__name__)

Connection = psycopg.Connection[dict[str, object]]
Cursor = psycopg.Cursor[dict[str, object]]

CONNECT_TIMEOUT = 5
IDLE_IN_TRANSACTION = 10.0  # seconds: our transactions never wait on the client in between statements
RETRY_CAP = 30.0
CANCEL_TIMEOUT = 2.0  # a cancel request the server does not acknowledge in this time is given up
STATEMENT_TIMEOUT = 30.0  # [store] statement_timeout and lock_timeout (seconds)
LOCK_TIMEOUT = 30.0


class _InFlight:
    """One call on its worker thread: the connection it uses, what it returned or raised."""

    def __init__(self, conn: Connection | None) -> None:
        self.conn = conn  # set by the worker thread once connected
        self.result: Any = None
        self.error: BaseException | None = None
        self.cancel_requested = False
        self.done = trio.Event()


@dataclass(frozen=True, slots=True)
class Fence:
    """What a connection's writes are checked against: this member still holds this lease epoch."""

    connection_id: int
    member: str
    epoch: int


def send_fence_check(conn: Connection, fence: Fence) -> Cursor:
    """First statement of every fenced transaction.  FOR SHARE: a take-over (which bumps the epoch)
    waits for this transaction, so the write lands before it or not at all.  In a pipeline its
    answer is read with the first results (`fence_held`), before anything commits."""
    return conn.execute(
        "SELECT 1 FROM leases WHERE connection_id = %s AND owner = %s AND epoch = %s FOR SHARE",
        (fence.connection_id, fence.member, fence.epoch),
    )


def check_fence(conn: Connection, fence: Fence) -> None:
    """The fence check, answered now."""
    fence_held(send_fence_check(conn, fence), fence)


def fence_held(sent: Cursor, fence: Fence) -> None:
    """Raises Fenced unless the check `sent` found the lease still held."""
    if sent.fetchone() is None:
        metrics.fencing_rejections_total.inc()
        raise Fenced(f"member {fence.member} no longer holds connection {fence.connection_id}'s lease "
                     f"(epoch {fence.epoch}): write refused")


F = TypeVar("F", bound=Callable[..., Any])


def _pipelined_transaction(conn: Connection, fence: Fence | None, fn: Callable[..., T],
                           args: tuple[object, ...], kwargs: dict[str, object]) -> T:
    """`fn`'s transaction as one pipeline: BEGIN goes out with its first statements, COMMIT with its
    last, and the server is waited for where `fn` reads a result and once at the end.  (psycopg's
    `transaction()` inside a pipeline syncs at BEGIN and at each level it nests: five round trips a
    batch instead of two, each one a wait for the GIL behind the threads that parse and encode.)
    On any error, whatever the pipeline sent is rolled back once it has been answered."""
    try:
        with conn.pipeline():
            conn.execute("BEGIN")  # ours to send (an autocommit connection): psycopg's would wait for its answer
            sent = send_fence_check(conn, fence) if fence is not None else None
            result = fn(conn, *args, **kwargs)
            if fence is not None and sent is not None:
                fence_held(sent, fence)  # answered with fn's first results; nothing committed yet
            conn.execute("COMMIT")  # answered as the pipeline ends (a failed COMMIT raises there)
    except BaseException:
        if not conn.closed and conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            try:
                conn.rollback()
            except psycopg.Error:
                conn.close()  # neither committed nor rolled back: the next call opens a new connection
        raise
    return result


def pipelined(fn: F) -> F:
    """Marks a store function whose transaction runs in pipeline mode: its statements go out
    without waiting for each other's answers, and the server is waited for only when a result is
    read (and at commit).  Only for functions that use no COPY and catch no statement's error
    (in a pipeline an error surfaces when results are read, not at `execute`)."""
    fn.__freshd_pipelined__ = True  # type: ignore[attr-defined]
    return fn


class Store:
    """Opened by :func:`open_store`; shared by every actor."""

    def __init__(
        self, url: str, *, max_connections: int, keyring: Keyring | None = None,
        statement_timeout: float = STATEMENT_TIMEOUT, lock_timeout: float = LOCK_TIMEOUT,
    ) -> None:
        self.url = url
        # seals credentials and tokens (freshd.secrets); an in-memory key when none is given (tests)
        self.keyring = keyring or Keyring.ephemeral()
        self.statement_timeout = statement_timeout
        self.lock_timeout = lock_timeout
        self._limiter = trio.CapacityLimiter(max_connections)
        self._idle: list[Connection] = []
        self._closed = False
        self._stop_deadline = math.inf
        self._waiters: set[trio.CancelScope] = set()
        self.available = True
        self._fence: Fence | None = None

    def fenced(self, fence: Fence) -> Store:
        """This store, with every call's transaction first checking `fence` (the connection's lease
        epoch): a member that lost the lease writes nothing, whatever it was doing."""
        return _FencedStore(self, fence)

    async def call(
        self, fn: Callable[Concatenate[Connection, P], T], /, *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Run ``fn(conn, *args, **kwargs)`` in one transaction on a worker thread.

        Not abandoned on cancellation: a commit in flight finishes (or fails)
        before the caller sees ``Cancelled``, so "committed" is never ambiguous
        from the caller's side.  But the caller's deadline holds: when its
        scope is cancelled (a `fail_after`, shutdown) while the statement waits
        (a lock held by another session, a slow query), the statement is
        cancelled server-side, the transaction rolls back, and the caller sees
        ``Cancelled``.  Every statement also obeys the server-side
        ``statement_timeout``/``lock_timeout``, reported as ``StoreTimeout``.
        """
        if self._closed:
            raise StoreUnavailable("the store is closed")
        async with self._limiter:
            if trio.current_time() >= self._stop_deadline:
                raise StoreTimeout("the daemon is stopping and its stop deadline for database writes has passed")
            call = _InFlight(self._idle.pop() if self._idle else None)
            try:
                await self._wait(call, functools.partial(self._run, call, fn, args, kwargs))
            finally:
                self._release(call)
            if isinstance(call.error, StoreTimeout):
                raise call.error  # the database answered (too late): not an outage
            if isinstance(call.error, StoreUnavailable):
                self._mark(available=False)
                raise call.error
            if call.error is not None:
                raise call.error
            self._mark(available=True)
            return cast(T, call.result)

    async def _wait(self, call: _InFlight, work: Callable[[], None]) -> None:
        """Run `work` on a worker thread and wait until it ends, whatever happens.

        If the caller is cancelled, or the stop deadline passes, first, the statement is cancelled
        server-side so the thread ends promptly even behind a lock held forever; the caller then
        sees ``Cancelled`` (or ``StoreTimeout`` for the stop deadline) unless the call went through.
        """
        token = trio.lowlevel.current_trio_token()
        context = contextvars.copy_context()
        trio.lowlevel.start_thread_soon(functools.partial(context.run, work),
                                        lambda _: token.run_sync_soon(call.done.set))
        waiter = trio.CancelScope(deadline=self._stop_deadline)
        self._waiters.add(waiter)
        try:
            with waiter:
                try:
                    await call.done.wait()
                except trio.Cancelled:
                    with trio.CancelScope(shield=True):
                        await self._cancel_statement(call)
                        await call.done.wait()
                    if call.error is not None:
                        raise  # nothing was committed: the caller's scope takes it from here
                    # it went through after all: the caller gets its result (and Cancelled at its next checkpoint)
        finally:
            self._waiters.discard(waiter)
        if waiter.cancelled_caught and call.error is not None:
            call.error = StoreTimeout(
                f"the daemon is stopping and the database did not answer before the stop deadline: {call.error}")

    async def _cancel_statement(self, call: _InFlight) -> None:
        conn = call.conn
        if conn is None or call.done.is_set():
            return  # still connecting (bounded by CONNECT_TIMEOUT) or already over
        call.cancel_requested = True
        try:
            await trio.to_thread.run_sync(functools.partial(conn.cancel_safe, timeout=CANCEL_TIMEOUT))
        except Exception as exc:  # the thread still ends, by statement_timeout at worst
            log.warning("store.cancel_failed", error=_one_line(exc))

    def _release(self, call: _InFlight) -> None:
        """Back to the idle list if reusable; a connection whose statement we cancelled is closed
        (a late cancel request must never hit the next call's statement)."""
        conn = call.conn
        if conn is None or conn.closed:
            return
        # and one left inside a transaction (no call should leave one) is closed, not handed to the next call
        if conn.broken or call.cancel_requested or self._closed \
                or conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            conn.close()
        else:
            self._idle.append(conn)

    def set_stop_deadline(self, deadline: float) -> None:
        """Shutdown: no store call outlives `deadline` (trio time), shielded final writes included;
        a statement still running then is cancelled server-side and its caller gets StoreTimeout."""
        self._stop_deadline = min(self._stop_deadline, deadline)
        for waiter in self._waiters:
            waiter.deadline = min(waiter.deadline, deadline)

    async def call_retrying(
        self, fn: Callable[Concatenate[Connection, P], T], /, *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """`call`, waiting out a database outage with backoff (0.5 s doubling to 30 s) until cancelled
        (or until the stop deadline, when retrying is pointless).

        For writes that must not be lost to a blip (job progress, outcomes): every one of
        them is idempotent, so a retry after an ambiguous failure is safe.
        """
        delay = 0.5
        while True:
            try:
                return await self.call(fn, *args, **kwargs)
            except StoreUnavailable as exc:
                if trio.current_time() + delay >= self._stop_deadline:
                    raise
                log.warning("store.retrying", retry_in=delay, error=str(exc))
                await trio.sleep(delay)
                delay = min(delay * 2, RETRY_CAP)

    def _connect(self) -> Connection:
        # server-side bounds on every statement and lock wait: a hung database cannot hold a
        # worker thread (and the caller) longer than this
        # and a session idle inside a transaction (a stopped process, a frozen VM) is ended by the
        # server after IDLE_IN_TRANSACTION: its locks (a lease FOR SHARE) cannot block a take-over
        options = (f"-c search_path=freshd,public -c statement_timeout={round(self.statement_timeout * 1000)}"
                   f" -c lock_timeout={round(self.lock_timeout * 1000)}"
                   f" -c idle_in_transaction_session_timeout={round(IDLE_IN_TRANSACTION * 1000)}")
        # autocommit: every call brackets its own transaction (`transaction()`, or BEGIN and COMMIT
        # sent in a pipeline), so nothing is ever left open by an implicit BEGIN
        return psycopg.connect(self.url, row_factory=dict_row, connect_timeout=CONNECT_TIMEOUT, options=options,
                               autocommit=True)

    def _run(
        self,
        call: _InFlight,
        fn: Callable[..., T],
        args: tuple[object, ...],
        kwargs: dict[str, object],
    ) -> None:
        """On the worker thread: never raises; the outcome goes into `call`."""
        conn = call.conn
        try:
            if conn is None or conn.closed or conn.broken:
                conn = call.conn = self._connect()
            started = time.perf_counter()
            if getattr(fn, "__freshd_pipelined__", False):
                call.result = _pipelined_transaction(conn, self._fence, fn, args, kwargs)
            else:
                with conn.transaction():
                    if self._fence is not None:
                        check_fence(conn, self._fence)
                    call.result = fn(conn, *args, **kwargs)
            metrics.db_write_seconds.observe(time.perf_counter() - started)
        except (psycopg.errors.QueryCanceled, psycopg.errors.LockNotAvailable) as exc:
            # the server stopped the statement; the transaction rolled back, the connection is fine
            call.error = StoreTimeout(self._timeout_message(call, exc))
            call.error.__cause__ = exc
        except psycopg.OperationalError as exc:
            if conn is not None:
                conn.close()
            call.error = StoreUnavailable(f"database unavailable: {_one_line(exc)}")
            call.error.__cause__ = exc
        except psycopg.errors.IdleInTransactionSessionTimeout as exc:
            # the server ended the session: this process stood still inside a transaction (stopped,
            # frozen) past IDLE_IN_TRANSACTION.  Nothing was committed and the connection is gone: an
            # outage of this call, which a retry on a new connection settles (or finds the lease lost)
            if conn is not None:
                conn.close()
            call.error = StoreUnavailable(f"the database ended the session, idle in a transaction for over "
                                          f"{IDLE_IN_TRANSACTION:g} s (was the process stopped?): {_one_line(exc)}")
            call.error.__cause__ = exc
        except BaseException as exc:
            # A statement error leaves the transaction rolled back; the connection is reusable
            # unless it broke (then `_release` closes it and the next call reconnects).
            call.error = exc

    def _timeout_message(self, call: _InFlight, exc: psycopg.Error) -> str:
        if call.cancel_requested:
            return f"cancelled at the caller's deadline: {_one_line(exc)}"
        if isinstance(exc, psycopg.errors.LockNotAvailable):
            return f"the database did not grant a lock within {self.lock_timeout:g} s (lock_timeout): {_one_line(exc)}"
        return (f"the database did not answer within {self.statement_timeout:g} s (statement_timeout): "
                f"{_one_line(exc)}")

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


class Listener:
    """LISTEN on `channel` over a dedicated autocommit connection (blocking psycopg in a worker
    thread): `wait_for(seconds)` returns when a NOTIFY arrives, or after `seconds`.  If the
    database is down it just sleeps, and reconnects on a later wait: callers poll anyway."""

    def __init__(self, url: str, channel: str) -> None:
        self.url, self.channel = url, channel
        self._conn: psycopg.Connection[Any] | None = None

    async def __aenter__(self) -> Listener:
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._conn is not None:
            self._conn.close()

    def _open(self) -> psycopg.Connection[Any]:
        conn = psycopg.connect(self.url, autocommit=True, connect_timeout=CONNECT_TIMEOUT)
        conn.execute(f"LISTEN {self.channel}")
        return conn

    async def wait_for(self, seconds: float) -> bool:
        def block() -> bool:
            if self._conn is None or self._conn.closed:
                self._conn = self._open()
            return any(True for _ in self._conn.notifies(timeout=seconds, stop_after=1))

        try:
            return await trio.to_thread.run_sync(block, abandon_on_cancel=True)
        except psycopg.Error:
            self._conn = None
            await trio.sleep(seconds)
            return False


class _FencedStore(Store):
    """A view of a store whose every call first checks a fence.  Everything else (the pool, the
    limiter, the keyring, availability, the stop deadline) is the base store's own."""

    def __init__(self, base: Store, fence: Fence) -> None:  # a view: the base is initialised
        self._base = base
        self._fence = fence

    def __getattr__(self, name: str) -> Any:
        return getattr(self._base, name)

    def _mark(self, *, available: bool) -> None:
        self._base._mark(available=available)

    def fenced(self, fence: Fence) -> Store:
        return _FencedStore(self._base, fence)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


@asynccontextmanager
async def open_store(
    url: str, *, max_connections: int = 4, apply_migrations: bool = True, keyring: Keyring | None = None,
    statement_timeout: float = STATEMENT_TIMEOUT, lock_timeout: float = LOCK_TIMEOUT,
) -> AsyncIterator[Store]:
    """Open the store, apply pending migrations, bring the typed views (freshd.store.views) in line with
    the streams' declarations, and close every connection on exit."""
    store = Store(url, max_connections=max_connections, keyring=keyring,
                  statement_timeout=statement_timeout, lock_timeout=lock_timeout)
    try:
        if apply_migrations:
            await trio.to_thread.run_sync(migrate.apply_migrations, url)
            # imported here, not at the top: `python -m freshd.store.views` runs it as __main__ (no cycle)
            from freshd.store import views

            await trio.to_thread.run_sync(views.ensure_views, url)
        metrics.store_up.set(1)
        yield store
    finally:
        store.close()
