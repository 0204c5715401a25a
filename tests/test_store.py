"""The store against a real PostgreSQL: migrations, idempotent page writes, job rules."""

from __future__ import annotations

import psycopg
import pytest
import trio

from freshd.batches import encode_record
from freshd.connectors.base import StreamSpec
from freshd.errors import StoreUnavailable
from freshd.store import connections, jobs, open_store, records
from freshd.store.jobs import IllegalTransition, JobKind, JobStatus
from freshd.store.migrate import apply_migrations, available_migrations
from tests.helpers import query

STREAM = StreamSpec("customers", "customers")


def page(cid: int, items: list[dict[str, object]], checkpoint: dict[str, object] | None = None,
         deleted: tuple[str, ...] = ()) -> records.PageWrite:
    return records.PageWrite(cid, "customers", [encode_record(STREAM, i) for i in items], deleted, checkpoint)


async def add_connection(store, name: str = "shop") -> int:  # type: ignore[no-untyped-def]
    row, created = await store.call(
        connections.upsert_connection, store.keyring, name=name, tenant="t1", provider="woocommerce",
        base_url="http://127.0.0.1:1", options={}, credentials={"consumer_key": "k", "consumer_secret": "s"},
        source="admin",
    )
    assert created
    return int(row.id)


async def test_migrations_apply_once_and_are_recorded(database_url: str) -> None:
    first = await trio.to_thread.run_sync(apply_migrations, database_url)
    again = await trio.to_thread.run_sync(apply_migrations, database_url)
    shipped = [m.version for m in available_migrations()]
    assert shipped[:3] == [1, 2, 3] and shipped == sorted(set(shipped))
    assert [m.version for m in first] == shipped
    assert again == []
    assert query(database_url, "SELECT version FROM schema_migrations ORDER BY version") == [(v,) for v in shipped]


async def test_page_write_is_idempotent_and_skips_unchanged(database_url: str) -> None:
    async with open_store(database_url) as store:
        cid = await add_connection(store)
        items = [{"id": i, "name": f"n{i}"} for i in range(1, 6)]
        first = await store.call(records.write_page, page(cid, items, {"page": 1}))
        assert (first.inserted, first.updated, first.unchanged) == (5, 0, 0)
        # the same page again (a replay after a crash): nothing written
        replay = await store.call(records.write_page, page(cid, items, {"page": 1}))
        assert (replay.inserted, replay.updated, replay.unchanged) == (0, 0, 5)
        # key order does not matter: canonical JSON
        reordered = [{"name": f"n{i}", "id": i} for i in range(1, 6)]
        assert (await store.call(records.write_page, page(cid, reordered))).unchanged == 5
        changed = await store.call(records.write_page, page(cid, [{"id": 3, "name": "changed"}], {"page": 2}))
        assert (changed.inserted, changed.updated) == (0, 1)
        assert await store.call(records.load_cursors, cid) == {"customers": {"page": 2}}
    rows = query(database_url, "SELECT external_id, payload->>'name' FROM records ORDER BY external_id")
    assert rows == [("1", "n1"), ("2", "n2"), ("3", "changed"), ("4", "n4"), ("5", "n5")]


async def test_duplicate_ids_in_one_page_keep_the_last_version(database_url: str) -> None:
    async with open_store(database_url) as store:
        cid = await add_connection(store)
        result = await store.call(records.write_page, page(cid, [{"id": 1, "v": "a"}, {"id": 1, "v": "b"}]))
        assert result.inserted == 1
    assert query(database_url, "SELECT payload->>'v' FROM records") == [("b",)]


async def test_two_page_writes_in_one_transaction_never_mix_their_rows(database_url: str) -> None:
    """A transaction writing two connections' pages (two-way sync stores both sides' written records)
    staged the second page on top of the first: the first's rows landed under the second connection."""
    async with open_store(database_url) as store:
        shop, erp = await add_connection(store, "shop"), await add_connection(store, "erp")

        def both(conn: psycopg.Connection[dict[str, object]]) -> None:
            records.write_page(conn, page(shop, [{"id": 5, "side": "shop"}, {"id": 6, "side": "shop"}]))
            records.write_page(conn, page(erp, [{"id": 5, "side": "erp"}]))

        await store.call(both)
    rows = query(database_url, "SELECT c.name, r.external_id, r.payload->>'side' FROM records r"
                 " JOIN connections c ON c.id = r.connection_id ORDER BY 1, 2")
    assert rows == [("erp", "5", "erp"), ("shop", "5", "shop"), ("shop", "6", "shop")]


async def test_tombstones_and_resurrection(database_url: str) -> None:
    async with open_store(database_url) as store:
        cid = await add_connection(store)
        await store.call(records.write_page, page(cid, [{"id": 1}, {"id": 2}]))
        gone = await store.call(records.write_page, page(cid, [], deleted=("2",)))
        assert gone.deleted == 1
        assert await store.call(records.count_records) == {cid: 1}
        back = await store.call(records.write_page, page(cid, [{"id": 2}]))
        assert back.updated == 1
        assert await store.call(records.count_records) == {cid: 2}


async def test_a_failing_page_write_leaves_no_partial_rows_or_cursor(database_url: str) -> None:
    async with open_store(database_url) as store:
        cid = await add_connection(store)
        await store.call(records.write_page, page(cid, [{"id": 1}], {"page": 1}))

        def half_then_fail(conn):  # type: ignore[no-untyped-def]
            records.write_page(conn, page(cid, [{"id": 2}], {"page": 2}))
            conn.execute("SELECT 1/0")

        with pytest.raises(psycopg.errors.DivisionByZero):
            await store.call(half_then_fail)
        assert await store.call(records.load_cursors, cid) == {"customers": {"page": 1}}
        assert await store.call(records.count_records) == {cid: 1}


async def test_a_pipelined_batch_commit_whose_lease_moved_writes_nothing(database_url: str) -> None:
    """commit_pages runs as one pipeline: the fence is read with its first results, not before its
    writes are sent; a lost lease must still roll every one of them back (records, cursor, progress)."""
    from freshd.errors import Fenced
    from freshd.store.db import Fence

    async with open_store(database_url) as store:
        cid = await add_connection(store)
        job, _ = await store.call(jobs.create_job, cid, JobKind.INITIAL, "add")
        batch = records.encode_pages([page(cid, [{"id": 1}, {"id": 2}], {"page": 1}),
                                      page(cid, [{"id": 2, "v": 2}], {"page": 2}, deleted=("9",))])

        commit = dict(job_id=job.id, failures=[("customers", "3", "bad")], max_share=0.5, confirmed=False,
                      progress=lambda *_: {"saved": True})

        with pytest.raises(Fenced):
            await store.fenced(Fence(cid, "gone-member", 99)).call(records.commit_pages, batch, **commit)
        assert await store.call(records.count_records) == {}
        assert await store.call(records.load_cursors, cid) == {}
        assert query(database_url, "SELECT progress FROM sync_jobs WHERE id = %s", job.id) != [({"saved": True},)]
        assert query(database_url, "SELECT count(*) FROM failed_items WHERE job_id = %s", job.id) == [(0,)]

        # the same call, unfenced, writes all of it: the test fails if the commit wrote nothing anyway
        results, _ = await store.call(records.commit_pages, batch, **commit)
        assert [(r.inserted, r.updated, r.unchanged) for r in results] == [(2, 0, 1)]
        assert query(database_url, "SELECT progress FROM sync_jobs WHERE id = %s", job.id) == [({"saved": True},)]
        assert await store.call(records.count_records) == {cid: 2}
        assert await store.call(records.load_cursors, cid) == {"customers": {"page": 2}}


async def test_a_batch_commit_waits_for_the_database_twice_not_at_every_nested_transaction_level(
    database_url: str,
) -> None:
    """A batch's transaction goes out as one pipeline: one wait for the upserts' counts (its progress
    needs them), one for the COMMIT.  psycopg's transaction() inside a pipeline waited at BEGIN and at
    each level it nested: five waits a batch, each one a wait for the GIL behind the threads that
    parse and encode (a 100k sync ran 13 % slower)."""
    import tempfile
    from itertools import pairwise

    from psycopg import pq

    async with open_store(database_url, max_connections=1) as store:
        cid = await add_connection(store)
        job, _ = await store.call(jobs.create_job, cid, JobKind.INITIAL, "add")
        batch = records.encode_pages([page(cid, [{"id": i} for i in range(150)], {"page": 1}),
                                      page(cid, [{"id": 1, "v": 2}], {"page": 2})])
        commit = dict(job_id=job.id, failures=[("customers", "3", "bad")], max_share=0.5, confirmed=False,
                      progress=lambda *_: {"saved": True})
        (conn,) = store._idle  # the one connection, left idle by the calls above
        with tempfile.TemporaryFile() as trace:
            conn.pgconn.trace(trace.fileno())
            conn.pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS | pq.Trace.REGRESS_MODE)
            try:
                results, _ = await store.call(records.commit_pages, batch, **commit)
            finally:
                conn.pgconn.untrace()
            trace.seek(0)
            senders = [line.split(b"\t", 1)[0] for line in trace.read().splitlines() if line.strip()]
        waits = sum(1 for sent, answered in pairwise(senders) if sent == b"F" and answered == b"B")
        assert waits == 2
        assert [(r.inserted, r.updated) for r in results] == [(150, 0)]  # id 1 twice: its last version
        assert await store.call(records.load_cursors, cid) == {"customers": {"page": 2}}


async def test_a_batch_commit_refused_midway_commits_nothing_and_its_connection_stays_usable(
    database_url: str,
) -> None:
    """A pipelined transaction whose statement fails (here a failed item for a job that does not
    exist) is rolled back whole once the pipeline is answered, and the connection serves the next call."""
    async with open_store(database_url, max_connections=1) as store:
        cid = await add_connection(store)
        job, _ = await store.call(jobs.create_job, cid, JobKind.INITIAL, "add")
        batch = records.encode_pages([page(cid, [{"id": 1}, {"id": 2}], {"page": 1})])
        commit = dict(failures=[("customers", "3", "bad")], max_share=0.5, confirmed=False,
                      progress=lambda *_: {"saved": True})
        with pytest.raises(psycopg.errors.ForeignKeyViolation):
            await store.call(records.commit_pages, batch, job_id=job.id + 1000, **commit)
        assert await store.call(records.count_records) == {}
        assert await store.call(records.load_cursors, cid) == {}
        results, _ = await store.call(records.commit_pages, batch, job_id=job.id, **commit)
        assert [(r.inserted, r.unchanged) for r in results] == [(2, 0)]
        assert query(database_url, "SELECT count(*) FROM failed_items WHERE job_id = %s", job.id) == [(1,)]


async def test_a_refused_batch_whose_rollback_fails_closes_its_connection_and_the_next_call_reconnects(
    database_url: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Neither committed nor rolled back, a connection must not serve the next call (it would run
    inside the failed transaction): it is closed, and the next call opens a new one."""
    async with open_store(database_url, max_connections=1) as store:
        cid = await add_connection(store)
        job, _ = await store.call(jobs.create_job, cid, JobKind.INITIAL, "add")
        batch = records.encode_pages([page(cid, [{"id": 1}], {"page": 1})])
        commit = dict(failures=[("customers", "3", "bad")], max_share=0.5, confirmed=False,
                      progress=lambda *_: {"saved": True})
        (first,) = store._idle

        def rollback_fails(self):  # type: ignore[no-untyped-def]
            raise psycopg.OperationalError("the server went away mid-rollback")

        monkeypatch.setattr(psycopg.Connection, "rollback", rollback_fails)
        with pytest.raises(psycopg.errors.ForeignKeyViolation):
            await store.call(records.commit_pages, batch, job_id=job.id + 1000, **commit)
        monkeypatch.undo()
        assert first.closed and store._idle == []
        results, _ = await store.call(records.commit_pages, batch, job_id=job.id, **commit)
        assert [r.inserted for r in results] == [1]


async def test_a_segment_larger_than_one_upsert_counts_and_writes_every_chunk(database_url: str) -> None:
    """A segment's rows go out UPSERT_ROWS at a time: the counts are the sum over its statements."""
    size = records.UPSERT_ROWS * 2 + 7
    async with open_store(database_url) as store:
        cid = await add_connection(store)
        first = [{"id": i, "v": 1} for i in range(size)]
        (result,) = await store.call(records.write_pages, records.encode_pages(
            [page(cid, first[:100]), page(cid, first[100:], {"page": 1})]))
        assert (result.inserted, result.updated, result.unchanged) == (size, 0, 0)
        again = [{"id": i, "v": 2 if i % 50 == 0 else 1} for i in range(size)]
        (result,) = await store.call(records.write_pages, records.encode_pages([page(cid, again, {"page": 2})]))
        changed = len(range(0, size, 50))
        assert (result.inserted, result.updated, result.unchanged) == (0, changed, size - changed)
        assert await store.call(records.count_records) == {cid: size}


async def test_one_live_job_per_connection(database_url: str) -> None:
    async with open_store(database_url) as store:
        cid = await add_connection(store)
        job, created = await store.call(jobs.create_job, cid, JobKind.INITIAL, "add")
        again, created_again = await store.call(jobs.create_job, cid, JobKind.FULL, "manual")
        assert created and not created_again and again.id == job.id
        await store.call(jobs.set_status, job.id, JobStatus.RUNNING)
        done = await store.call(jobs.set_status, job.id, JobStatus.COMPLETED)
        assert done.finished_at is not None and done.started_at is not None
        with pytest.raises(IllegalTransition):
            await store.call(jobs.set_status, job.id, JobStatus.RUNNING)
        nxt, created = await store.call(jobs.create_job, cid, JobKind.INCREMENTAL, "manual")
        assert created and nxt.id != job.id


async def test_running_jobs_become_interrupted_at_start(database_url: str) -> None:
    async with open_store(database_url) as store:
        cid = await add_connection(store)
        job, _ = await store.call(jobs.create_job, cid, JobKind.INITIAL, "add")
        await store.call(jobs.set_status, job.id, JobStatus.RUNNING)
        assert await store.call(jobs.interrupt_running) == [job.id]
        assert (await store.call(jobs.get_job, job.id)).status is JobStatus.INTERRUPTED


async def test_prune_keeps_the_newest_jobs(database_url: str) -> None:
    async with open_store(database_url) as store:
        cid = await add_connection(store)
        for _ in range(5):
            job, _ = await store.call(jobs.create_job, cid, JobKind.INCREMENTAL, "manual")
            await store.call(jobs.set_status, job.id, JobStatus.RUNNING)
            await store.call(jobs.set_status, job.id, JobStatus.COMPLETED)
        from datetime import timedelta

        assert await store.call(jobs.prune_jobs, keep_per_connection=2, max_age=timedelta(days=30)) == 3
        remaining, total = await store.call(jobs.list_jobs)
        assert total == 2 and [j.id for j in remaining] == [job.id, job.id - 1]


async def test_unreachable_database_is_store_unavailable() -> None:
    with pytest.raises(StoreUnavailable):
        async with open_store("postgresql://nobody@127.0.0.1:1/none"):
            pass


async def test_a_pipelined_commit_behind_a_held_lock_ends_at_the_limit_or_deadline_and_writes_nothing(
    database_url: str,
) -> None:
    """In a pipeline the statements wait together: a lock held on the job's row (its progress is
    the last write) still ends the call at lock_timeout, or at the caller's deadline, with nothing
    committed, and the store's next pipelined commit goes through."""
    from freshd.errors import StoreTimeout

    async with open_store(database_url, statement_timeout=5.0, lock_timeout=0.5) as store:
        cid = await add_connection(store)
        job, _ = await store.call(jobs.create_job, cid, JobKind.INITIAL, "add")
        batch = records.encode_pages([page(cid, [{"id": 1}, {"id": 2}], {"page": 1})])
        commit = dict(job_id=job.id, max_share=0.5, confirmed=False, progress=lambda *_: {"saved": True})
        with psycopg.connect(database_url, options="-c search_path=freshd,public") as holder:
            holder.execute("SELECT id FROM sync_jobs WHERE id = %s FOR UPDATE", (job.id,))
            with trio.fail_after(5), pytest.raises(StoreTimeout, match=r"did not grant a lock within 0.5 s"):
                await store.call(records.commit_pages, batch, **commit)
            holder.execute("SET lock_timeout = 0")
            with pytest.raises(trio.TooSlowError), trio.fail_after(0.3):
                async with open_store(database_url, statement_timeout=5.0, lock_timeout=5.0) as patient:
                    await patient.call(records.commit_pages, batch, **commit)
            holder.rollback()
        assert await store.call(records.count_records) == {}
        assert await store.call(records.load_cursors, cid) == {}
        results, _ = await store.call(records.commit_pages, batch, **commit)
        assert [(r.inserted, r.unchanged) for r in results] == [(2, 0)]
        assert await store.call(records.load_cursors, cid) == {"customers": {"page": 1}}


async def test_a_process_stopped_inside_a_transaction_past_the_idle_limit_gets_an_outage_not_a_crash(
    database_url: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """SIGSTOP (or a frozen VM) inside a store call: the server ends the idle session, and the
    call's COMMIT failed with IdleInTransactionSessionTimeout, which no caller handled: a zombie
    member woke up and its daemon exited.  It is StoreUnavailable now, and the next call works."""
    import time

    from freshd.store import db

    monkeypatch.setattr(db, "IDLE_IN_TRANSACTION", 0.3)
    async with open_store(database_url) as store:
        cid = await add_connection(store)

        def stalls_mid_transaction(conn):  # type: ignore[no-untyped-def]
            conn.execute("SELECT 1")
            time.sleep(1.0)  # stopped: the server's idle-in-transaction timer runs out
            records.save_cursor(conn, cid, "customers", {"page": 9})

        with pytest.raises(StoreUnavailable, match="idle in a transaction"):
            await store.call(stalls_mid_transaction)
        assert await store.call(records.load_cursors, cid) == {}
        await store.call(records.save_cursor, cid, "customers", {"page": 1})
        assert await store.call(records.load_cursors, cid) == {"customers": {"page": 1}}


async def test_a_statement_behind_a_lock_held_forever_is_a_store_timeout_naming_the_limit(database_url: str) -> None:
    from freshd.errors import StoreTimeout

    async with open_store(database_url, statement_timeout=1.0, lock_timeout=0.5) as store:
        cid = await add_connection(store)
        with psycopg.connect(database_url, options="-c search_path=freshd,public") as holder:
            holder.execute("SELECT id FROM connections WHERE id = %s FOR UPDATE", (cid,))
            with trio.fail_after(5):
                with pytest.raises(StoreTimeout, match=r"did not grant a lock within 0.5 s \(lock_timeout\)"):
                    await store.call(connections.record_outcome, cid, success=True, error=None)
                # the caller's own deadline cancels the statement server-side: fail_after is honoured
                with pytest.raises(trio.TooSlowError), trio.fail_after(0.2):
                    await store.call(lambda conn: conn.execute("SELECT pg_sleep(3)"))
            holder.rollback()
        assert store.available  # a timeout is not an outage
        await store.call(connections.record_outcome, cid, success=True, error=None)  # the store works on
        with trio.fail_after(5), pytest.raises(StoreTimeout, match=r"did not answer within 1 s \(statement_timeout\)"):
            await store.call(lambda conn: conn.execute("SELECT pg_sleep(3)"))
