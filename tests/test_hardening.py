"""Hardening against a hostile provider (issue 9): each test is named after the failure it pins.

The provider is tests/hostile.py: the faithful WooCommerce simulator behind a raw HTTP server
that corrupts its answers on purpose.  Jobs run through the real engine into a real PostgreSQL.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from typing import Any

import pytest
import trio

from freshd import metrics
from freshd.connectors.base import ConnectionSettings
from freshd.connectors.woocommerce.connector import WooCommerceConnector
from freshd.policies.gate import ConnectionPolicies
from freshd.policies.limits import ProviderLimits
from freshd.progress import JobControl, JobOutcome
from freshd.store import Store, connections, jobs, open_store
from freshd.store.jobs import JobKind, JobStatus
from freshd.sync import JobRunner
from tests.helpers import query
from tests.hostile import CREDENTIALS, HostileShop


@dataclass
class Rig:
    shop: HostileShop
    url: str
    store: Store
    database_url: str
    connection_id: int

    def settings(self, **options: Any) -> ConnectionSettings:
        return ConnectionSettings("hostile", "woocommerce", self.url, credentials=CREDENTIALS, options=options)

    async def sync(self, kind: JobKind = JobKind.FULL, *, entities: tuple[str, ...] = ("customers",),
                   control: JobControl | None = None, confirm_deletes: bool = False,
                   policies: Callable[[ConnectionSettings], ConnectionPolicies] | None = None,
                   **options: Any) -> tuple[JobOutcome, JobRunner]:
        job, created = await self.store.call(jobs.create_job, self.connection_id, kind, "test",
                                             confirm_deletes=confirm_deletes)
        assert created
        settings = self.settings(**options)
        connector = WooCommerceConnector(settings, policies=policies(settings) if policies else None)
        try:
            runner = JobRunner(self.store, connector, self.connection_id, job, control or JobControl(),
                               entities=list(entities))
            return await runner.run(), runner
        finally:
            await connector.aclose()

    def live(self, entity: str = "customers") -> int:
        return int(query(self.database_url, "SELECT count(*) FROM records WHERE entity = %s AND deleted_at IS NULL",
                         entity)[0][0])

    def cursor(self, entity: str = "customers") -> dict[str, Any] | None:
        rows = query(self.database_url, "SELECT state FROM cursors WHERE entity = %s", entity)
        return rows[0][0] if rows else None  # type: ignore[return-value]


@pytest.fixture
async def rig(database_url: str, nursery: trio.Nursery) -> AsyncIterator[Rig]:
    shop = HostileShop(customers=250)
    port = await nursery.start(shop.serve)
    url = f"http://127.0.0.1:{port}"
    async with open_store(database_url) as store:
        row, _ = await store.call(
            connections.upsert_connection, store.keyring, name="hostile", tenant="t", provider="woocommerce",
            base_url=url, options={}, credentials=CREDENTIALS, source="admin",
        )
        yield Rig(shop, url, store, database_url, row.id)


def refused(reason: str) -> float:
    return metrics.REGISTRY.get_sample_value(
        "freshd_reconciliations_refused_total", {"provider": "woocommerce", "reason": reason}) or 0.0


async def synced_250(rig: Rig) -> None:
    with trio.fail_after(30):
        outcome, _ = await rig.sync(JobKind.INITIAL)
    assert outcome.status is JobStatus.COMPLETED, outcome.error
    assert rig.live() == 250


# --- 1. never infer deletions from a listing that is not provably complete ------------------------


@pytest.mark.parametrize("fault", ["empty_page", "gzip_empty_page", "total_pages_too_small"])
async def test_short_full_listing_marks_live_records_deleted(rig: Rig, fault: str) -> None:
    await synced_250(rig)
    before = refused("incomplete")
    match fault:
        case "empty_page":
            rig.shop.empty_pages = {2}
        case "gzip_empty_page":
            rig.shop.empty_pages, rig.shop.gzip_bodies = {2}, True
        case "total_pages_too_small":
            rig.shop.total_pages = "2"
    with trio.fail_after(30):
        outcome, _ = await rig.sync(JobKind.FULL)
    assert rig.live() == 250, "live records were tombstoned on a short listing"
    assert outcome.status is JobStatus.PARTIAL
    assert outcome.error is not None and "no deletions inferred" in outcome.error, outcome.error
    assert "150 of 250" in outcome.error or "200 of 250" in outcome.error, outcome.error
    assert refused("incomplete") == before + 1


@pytest.mark.parametrize("pages", ["0", "-1"])
async def test_first_sync_with_zero_total_pages_ends_completed_with_nothing(rig: Rig, pages: str) -> None:
    rig.shop.total_pages = pages
    with trio.fail_after(30):
        outcome, _ = await rig.sync(JobKind.INITIAL)
    assert outcome.status is not JobStatus.COMPLETED
    assert outcome.error is not None and "X-WP-TotalPages" in outcome.error, outcome.error
    assert rig.cursor() is None or rig.cursor().get("phase") != "done"  # type: ignore[union-attr]


async def test_missing_paging_headers_truncate_a_listing_to_one_page(rig: Rig) -> None:
    await synced_250(rig)
    rig.shop.drop_paging_headers = True
    with trio.fail_after(30):
        outcome, _ = await rig.sync(JobKind.FULL)
    assert rig.live() == 250
    assert outcome.status is JobStatus.FAILED
    assert outcome.error is not None and "X-WP-Total" in outcome.error


async def test_reconciliation_deleting_a_large_share_is_held_for_confirmation(rig: Rig) -> None:
    await synced_250(rig)
    for rid in range(1, 61):  # the shop really deleted 60 of 250 (24 %)
        rig.shop.sim.delete("customers", rid, force=True)
    with trio.fail_after(30):
        outcome, _ = await rig.sync(JobKind.FULL)
    assert rig.live() == 250, "a large reconciliation ran without confirmation"
    assert outcome.status is JobStatus.PARTIAL
    assert outcome.error is not None and "--confirm-deletes" in outcome.error, outcome.error
    held = await rig.store.call(jobs.held_deletions, rig.connection_id)
    assert [(h["entity"], h["count"], h["live"]) for h in held] == [("customers", 60, 250)]

    with trio.fail_after(30):
        outcome, _ = await rig.sync(JobKind.FULL, confirm_deletes=True)
    assert outcome.status is JobStatus.COMPLETED, outcome.error
    assert rig.live() == 190
    assert await rig.store.call(jobs.held_deletions, rig.connection_id) == []


async def test_small_reconciliation_applies_without_confirmation(rig: Rig) -> None:
    await synced_250(rig)
    for rid in range(1, 11):  # 4 %: under the 10 % default
        rig.shop.sim.delete("customers", rid, force=True)
    with trio.fail_after(30):
        outcome, _ = await rig.sync(JobKind.FULL)
    assert outcome.status is JobStatus.COMPLETED, outcome.error
    assert rig.live() == 240


# --- 2. a provider clock far from ours never moves a cursor past our own clock --------------------


async def test_one_bad_date_header_blinds_incremental_syncs(database_url: str, nursery: trio.Nursery) -> None:
    shop = HostileShop(customers=1, orders=30)
    port = await nursery.start(shop.serve)
    async with open_store(database_url) as store:
        row, _ = await store.call(
            connections.upsert_connection, store.keyring, name="hostile", tenant="t", provider="woocommerce",
            base_url=f"http://127.0.0.1:{port}", options={}, credentials=CREDENTIALS, source="admin")
        rig = Rig(shop, f"http://127.0.0.1:{port}", store, database_url, row.id)
        with trio.fail_after(30):
            outcome, _ = await rig.sync(JobKind.INITIAL, entities=("orders",))
        assert outcome.status is JobStatus.COMPLETED, outcome.error
        skewed = metrics.REGISTRY.get_sample_value("freshd_provider_clock_skew_total",
                                                   {"provider": "woocommerce"}) or 0.0
        shop.date = "Thu, 01 Jan 2099 00:00:00 GMT"
        with trio.fail_after(30):
            outcome, _ = await rig.sync(JobKind.INCREMENTAL, entities=("orders",))
        assert outcome.status is JobStatus.COMPLETED, outcome.error
        since = rig.cursor("orders")["cursor"]  # type: ignore[index]
        assert since < "2027", f"the cursor moved to the provider's 2099 clock: {since}"
        assert (metrics.REGISTRY.get_sample_value("freshd_provider_clock_skew_total",
                                                  {"provider": "woocommerce"}) or 0.0) > skewed
        shop.behave()
        changed = shop.sim.update("orders", 5, customer_note="changed after the bad date")
        with trio.fail_after(30):
            outcome, _ = await rig.sync(JobKind.INCREMENTAL, entities=("orders",))
        stored = query(database_url, "SELECT payload->>'customer_note' FROM records WHERE entity = 'orders'"
                       " AND external_id = '5'")
        assert stored[0][0] == changed["customer_note"], "a change after the bad Date was missed"


# --- 4. one bad record is a failed item, never a crash ----------------------------------------------


@pytest.mark.parametrize("items", [
    [{"id": "abc", "email": "text@id.example", "date_modified_gmt": "2026-01-01T00:00:00"}],
    [17, "scalar"],
    [{"email": "no-id@example.com"}, {"email": "no-id-2@example.com"}],
], ids=["non_numeric_id", "scalars", "no_id"])
async def test_bad_items_crash_incremental_customer_syncs(rig: Rig, items: list[object]) -> None:
    rig.shop.records = items
    with trio.fail_after(30):
        outcome, runner = await rig.sync(JobKind.INITIAL)
    assert outcome.status is JobStatus.PARTIAL, outcome.error
    assert rig.live() == 250
    failed = query(rig.database_url, "SELECT reason FROM failed_items WHERE job_id = %s", runner.job.id)
    assert len(failed) == len(items)
    assert all("loop" not in str(reason) for (reason,) in failed)
    for _ in range(2):  # the periodic diff (diff_interval 0) and the next one: no crash, no deletions
        with trio.fail_after(30):
            outcome, runner = await rig.sync(JobKind.INCREMENTAL, diff_interval=0)
        assert outcome.status in (JobStatus.PARTIAL, JobStatus.COMPLETED), outcome.error
        assert "internal error" not in (outcome.error or "")
        assert rig.live() == 250


async def test_redirect_reported_as_malformed_json(rig: Rig) -> None:
    rig.shop.redirect = True
    with trio.fail_after(30):
        outcome, _ = await rig.sync(JobKind.INITIAL)
    assert outcome.status is JobStatus.FAILED
    assert outcome.error is not None and "redirect" in outcome.error and "base_url" in outcome.error
    assert "JSON" not in outcome.error


# --- 9. waits that cannot be cancelled; requests without a deadline -----------------------------------


async def test_retry_after_999999_is_waited_out(rig: Rig) -> None:
    rig.shop.retry_after = "999999"
    with trio.fail_after(20):
        outcome, _ = await rig.sync(JobKind.INITIAL)
    assert outcome.status is JobStatus.FAILED
    assert outcome.error is not None and "asked to wait 999999 s" in outcome.error, outcome.error


@pytest.mark.parametrize("request_kind", ["cancel", "pause"])
async def test_cancel_and_pause_do_nothing_during_a_long_wait(rig: Rig, request_kind: str) -> None:
    from freshd.progress import ControlRequest

    await synced_250(rig)
    rig.shop.retry_after = "600"  # under the cap: waited out, unless interrupted
    control = JobControl()
    result: list[JobOutcome] = []

    async def run() -> None:
        outcome, _ = await rig.sync(JobKind.FULL, control=control)
        result.append(outcome)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run)
        await trio.sleep(1.0)  # the job is now waiting out the 600 s
        with trio.fail_after(5):
            if request_kind == "cancel":
                control.set(ControlRequest.CANCEL)
                while not result:
                    await trio.sleep(0.05)
                assert result[0].status is JobStatus.CANCELLED
                return
            control.set(ControlRequest.PAUSE)
            while job_status(rig) != "paused":
                await trio.sleep(0.05)
        requests = sum(rig.shop.requests.values())
        await trio.sleep(1.0)
        assert sum(rig.shop.requests.values()) == requests, "a paused job kept sending requests"
        control.set(ControlRequest.NONE)  # resume: from the committed cursor, still honouring the 600 s
        with trio.fail_after(5):
            while job_status(rig) != "running":
                await trio.sleep(0.05)
            control.set(ControlRequest.CANCEL)
            while not result:
                await trio.sleep(0.05)
    assert result[0].status is JobStatus.CANCELLED
    assert rig.live() == 250


def job_status(rig: Rig) -> str | None:
    rows = query(rig.database_url, "SELECT status FROM sync_jobs ORDER BY id DESC LIMIT 1")
    return str(rows[0][0]) if rows else None


async def test_trickled_headers_hold_a_request_for_ever(rig: Rig) -> None:
    rig.shop.trickle = 1.0  # one byte a second: every read is "on time"
    with trio.fail_after(30):
        outcome, _ = await rig.sync(JobKind.INITIAL, policies=limits(request_deadline=1.5))
    assert outcome.status is JobStatus.FAILED
    assert outcome.error is not None and "request_deadline" in outcome.error, outcome.error


# --- 10. a response can take all the memory --------------------------------------------------------------


@pytest.mark.parametrize("fault", ["endless", "gzip_bomb", "big_body"])
async def test_provider_response_takes_all_the_memory(rig: Rig, fault: str) -> None:
    import tracemalloc

    cap = 4 * 1024 * 1024
    match fault:
        case "endless":
            rig.shop.endless = True
        case "gzip_bomb":
            rig.shop.bomb = 400 * 1024 * 1024
        case "big_body":
            rig.shop.body_bytes = 50 * 1024 * 1024
    tracemalloc.start()
    try:
        with trio.fail_after(60):
            outcome, _ = await rig.sync(JobKind.INITIAL, policies=limits(max_response_bytes=cap))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert outcome.status is JobStatus.FAILED
    assert outcome.error is not None and "max_response_bytes" in outcome.error, outcome.error
    assert peak < 8 * cap, f"peak {peak / 2**20:.0f} MiB for a {cap / 2**20:.0f} MiB cap"


async def test_ten_million_total_pages_materialises_the_page_list(rig: Rig) -> None:
    import tracemalloc

    await synced_250(rig)
    rig.shop.total_pages = "10000000"
    tracemalloc.start()
    try:
        with trio.fail_after(30):
            outcome, _ = await rig.sync(JobKind.FULL)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert outcome.status is JobStatus.FAILED and "X-WP-TotalPages" in (outcome.error or ""), outcome.error
    assert peak < 20 * 2**20
    assert rig.live() == 250


# --- 11. a provider that echoes the request URL puts the secret everywhere ----------------------------


async def test_echoed_url_puts_plaintext_secret_in_job_error(database_url: str, nursery: trio.Nursery) -> None:
    secret = "cs_CANARY2/x+y=z"
    creds = {"consumer_key": "ck_canary_key", "consumer_secret": secret}
    shop = HostileShop(customers=5, credentials=creds, echo_url_status=403)
    port = await nursery.start(shop.serve)
    async with open_store(database_url) as store:
        row, _ = await store.call(
            connections.upsert_connection, store.keyring, name="canary", tenant="t", provider="woocommerce",
            base_url=f"http://127.0.0.1:{port}", options={"auth": "query"}, credentials=creds, source="admin")
        job, _ = await store.call(jobs.create_job, row.id, JobKind.INITIAL, "test")
        connector = WooCommerceConnector(ConnectionSettings("canary", "woocommerce", f"http://127.0.0.1:{port}",
                                                            credentials=creds, options={"auth": "query"}))
        try:
            with trio.fail_after(30):
                outcome = await JobRunner(store, connector, row.id, job, JobControl(),
                                          entities=["customers"]).run()
        finally:
            await connector.aclose()
        await store.call(connections.record_outcome, row.id, success=False, error=outcome.error)
    assert outcome.error is not None and "Sorry, you cannot list resources" in outcome.error  # the echo is there
    forms = [secret, "cs_CANARY2%2Fx%2By%3Dz", "cs_CANARY2/x%2By%3Dz", "cs_CANARY2%2Fx+y%3Dz"]
    stored = " ".join(str(r) for r in [
        *query(database_url, "SELECT error FROM sync_jobs"),
        *query(database_url, "SELECT last_error FROM connections"),
        *query(database_url, "SELECT message, details::text FROM activity_log"),
    ])
    for form in forms:
        assert form not in outcome.error, form
        assert form not in stored, form


def limits(**values: Any) -> Callable[[ConnectionSettings], ConnectionPolicies]:
    """Connection policies with these provider limits (the rest as standalone defaults)."""
    return lambda settings: replace(
        ConnectionPolicies.standalone("woocommerce", WooCommerceConnector.rate_limits, settings.options),
        limits=ProviderLimits(**values))


async def test_progress_saved_one_batch_behind_the_commit(rig: Rig) -> None:
    """The progress a crash leaves in the job row is the progress of what was committed with it."""
    from freshd.progress import ControlRequest

    control = JobControl()
    control.set(ControlRequest.PAUSE)  # parks the writer right after its first commit
    async with trio.open_nursery() as nursery:
        nursery.start_soon(functools.partial(rig.sync, JobKind.INITIAL, control=control, page_concurrency=1))
        with trio.fail_after(20):
            while job_status(rig) != "paused":
                await trio.sleep(0.05)
        saved = query(rig.database_url, "SELECT progress FROM sync_jobs ORDER BY id DESC LIMIT 1")[0][0]
        assert saved["customers"]["processed"] == rig.live() == 100, (saved, rig.live())  # type: ignore[index]
        control.set(ControlRequest.CANCEL)


def test_url_encoded_secret_reaches_the_log() -> None:
    from freshd import logs

    logs.register_secret("cs_LOGCANARY/x+y=z")
    for form in ("cs_LOGCANARY/x+y=z", "cs_LOGCANARY%2Fx%2By%3Dz", "cs_LOGCANARY/x%2By%3Dz",
                 "Y3NfTE9HQ0FOQVJZL3greT16"):  # raw, a query string's, a path's, base64
        line = logs.redact(None, "info", {"event": "provider.retry", "error": f"GET /x?consumer_secret={form} 403"})
        assert form not in str(line["error"]), form
