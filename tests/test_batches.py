"""The writer's staging: pages grouped into batches, and batches merged while the committer is busy."""

from __future__ import annotations

from typing import Any

import trio
import trio.testing

from freshd.batches import Pages, Staged, encode_batch, merge, stage_batches
from freshd.connectors.base import Page, StreamSpec
from freshd.store import jobs, open_store, records
from freshd.store.jobs import JobKind
from tests.test_store import add_connection

STREAM = StreamSpec("customers", "customers")


def page(n: int, *ids: int, deleted: tuple[str, ...] = ()) -> tuple[Page, trio.Event | None]:
    return Page("customers", [{"id": i, "v": n} for i in ids], {"page": n}, deleted=deleted), None


def encoder(gate: trio.Event, cid: int = 1) -> Any:
    async def encode(batch: Pages) -> Staged:
        await gate.wait()
        return encode_batch(STREAM, batch, cid, events=None, dry_run=False)

    return encode


async def staged_after(pages_then: list[tuple[Page, trio.Event | None]], *, committer_waiting: bool) -> Staged:
    """Page 1 is being encoded when `pages_then` arrive; the committer is busy unless `committer_waiting`."""
    send, receive = trio.open_memory_channel[tuple[Page, trio.Event | None]](10)
    send_staged, receive_staged = trio.open_memory_channel[Staged](0)
    gate = trio.Event()
    async with trio.open_nursery() as nursery:
        await send.send(page(1, 1, 2))
        nursery.start_soon(lambda: stage_batches(receive, send_staged, encoder(gate), max_records=2000,
                                                 merge_while_busy=True))
        if committer_waiting:
            taken: list[Staged] = []

            async def commit() -> None:
                taken.append(await receive_staged.receive())

            nursery.start_soon(commit)
        await trio.testing.wait_all_tasks_blocked()
        for item in pages_then:
            await send.send(item)
        gate.set()
        await trio.testing.wait_all_tasks_blocked()
        staged = taken[0] if committer_waiting else await receive_staged.receive()
        nursery.cancel_scope.cancel()
    return staged


async def test_pages_fetched_while_the_committer_is_busy_join_the_batch_it_takes_next() -> None:
    staged = await staged_after([page(2, 2, 3), page(3, 4, deleted=("1",))], committer_waiting=False)
    assert [p.checkpoint for p in staged.pages] == [{"page": 1}, {"page": 2}, {"page": 3}]
    assert staged.size == 5 and staged.encoded is not None
    assert staged.encoded.checkpoint == {"page": 3}


async def test_a_committer_waiting_takes_the_batch_at_once_without_merging() -> None:
    staged = await staged_after([page(2, 3)], committer_waiting=True)
    assert [p.checkpoint for p in staged.pages] == [{"page": 1}]


async def test_a_merged_batch_commits_what_its_two_batches_would(database_url: str) -> None:
    """Segments in order: a record changed by the later batch keeps the later version, one deleted
    after its upsert stays deleted, and the cursor is the later batch's."""
    async with open_store(database_url) as store:
        cid = await add_connection(store)
        job, _ = await store.call(jobs.create_job, cid, JobKind.INITIAL, "add")
        first = encode_batch(STREAM, [page(1, 1, 2)], cid, events=None, dry_run=False)
        then = encode_batch(STREAM, [page(2, 2, 3), page(3, deleted=("1",))], cid, events=None, dry_run=False)
        merged = merge(first, then)
        assert merged.encoded is not None
        results, _ = await store.call(records.commit_pages, merged.encoded, job_id=job.id, max_share=0.5,
                                      confirmed=False, progress=lambda *_: {})
        assert sum(r.inserted for r in results) == 3 and sum(r.deleted for r in results) == 1
        rows = await store.call(lambda conn: conn.execute(
            "SELECT external_id, payload->>'v' AS v, deleted_at IS NOT NULL AS gone FROM records"
            " WHERE connection_id = %s ORDER BY external_id", (cid,)).fetchall())
        assert [(r["external_id"], r["v"], r["gone"]) for r in rows] == [("1", "1", True), ("2", "2", False),
                                                                          ("3", "2", False)]
        assert await store.call(records.load_cursors, cid) == {"customers": {"page": 3}}
