"""WooCommerce end to end through the sync engine: real simulator over loopback, real PostgreSQL."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import trio

from freshd.connectors.base import ConnectionSettings
from freshd.connectors.simulator import serve_asgi
from freshd.connectors.woocommerce.connector import WooCommerceConnector
from freshd.connectors.woocommerce.simulator import WooCommerceSimulator
from freshd.progress import ControlRequest, JobControl, JobOutcome
from freshd.store import Store, connections, jobs, open_store
from freshd.store.jobs import JobKind, JobStatus
from freshd.sync import JobRunner
from tests.helpers import query

CREDS = {"consumer_key": "ck_test", "consumer_secret": "cs_test"}


@dataclass
class Rig:
    sim: WooCommerceSimulator
    url: str
    store: Store
    database_url: str
    connection_id: int

    def settings(self, **options: Any) -> ConnectionSettings:
        return ConnectionSettings("shop", "woocommerce", self.url, credentials=CREDS, options=options)

    async def sync(
        self, kind: JobKind, control: JobControl | None = None, *, batch: int = 2000, **options: Any
    ) -> tuple[JobOutcome, JobRunner]:
        job, created = await self.store.call(jobs.create_job, self.connection_id, kind, "test")
        assert created
        connector = WooCommerceConnector(self.settings(**options))
        try:
            runner = JobRunner(self.store, connector, self.connection_id, job, control or JobControl(),
                               max_batch_records=batch)
            return await runner.run(), runner
        finally:
            await connector.aclose()

    def live(self, entity: str) -> int:
        return int(query(self.database_url, "SELECT count(*) FROM records WHERE entity = %s AND deleted_at IS NULL",
                         entity)[0][0])


@pytest.fixture
async def rig(database_url: str, nursery: trio.Nursery) -> AsyncIterator[Rig]:
    sim = WooCommerceSimulator(records=230, seed=7, credentials=CREDS)
    port = await nursery.start(functools.partial(serve_asgi, sim.app, host="127.0.0.1", port=0))
    async with open_store(database_url) as store:
        row, _ = await store.call(
            connections.upsert_connection, store.keyring, name="shop", tenant="t", provider="woocommerce",
            base_url=f"http://127.0.0.1:{port}", options={}, credentials=CREDS, source="admin",
        )
        yield Rig(sim, f"http://127.0.0.1:{port}", store, database_url, row.id)


async def test_full_then_incremental_sync_counts(rig: Rig) -> None:
    with trio.fail_after(60):
        outcome, runner = await rig.sync(JobKind.INITIAL)
    assert outcome.status is JobStatus.COMPLETED, outcome.error
    assert rig.live("customers") == 230
    assert rig.live("orders") == 230
    assert rig.live("products") == 23
    progress = runner.progress.as_json()
    assert progress["customers"]["processed"] == 230 and progress["customers"]["total"] == 230
    assert progress["products"]["processed"] == 23

    # nothing changed: the incremental sync fetches (almost) nothing and writes nothing
    with trio.fail_after(60):
        outcome, runner = await rig.sync(JobKind.INCREMENTAL)
    assert outcome.status is JobStatus.COMPLETED, outcome.error
    assert runner.progress.entities["customers"].processed == 0
    assert runner.progress.entities["orders"].processed <= 2  # the 1 s window overlap may re-read


async def test_the_writer_reports_how_long_it_committed_and_how_long_it_waited_for_pages(rig: Rig) -> None:
    """freshd_sync_writer_seconds_total says whether the store or the provider sets a sync's pace:
    both shares are counted, and together they fit inside the job's own duration."""
    from freshd import metrics

    def seconds(state: str) -> float:
        return float(metrics.sync_writer_seconds_total.labels("woocommerce", state)._value.get())

    before = {state: seconds(state) for state in ("committing", "waiting")}
    started = trio.current_time()
    with trio.fail_after(60):
        outcome, _ = await rig.sync(JobKind.INITIAL, batch=100)
    took = trio.current_time() - started
    assert outcome.status is JobStatus.COMPLETED, outcome.error
    spent = {state: seconds(state) - before[state] for state in before}
    assert spent["committing"] > 0 and spent["waiting"] > 0
    assert spent["committing"] + spent["waiting"] <= took


async def test_mutations_show_up_after_the_next_incremental_sync(rig: Rig) -> None:
    with trio.fail_after(60):
        await rig.sync(JobKind.INITIAL)
    rig.sim.update("customers", 5, first_name="Zelda")
    rig.sim.update("orders", 10, status="completed")
    rig.sim.delete("customers", 7)
    created = rig.sim.create("products", name="Brand new widget")
    with trio.fail_after(60):
        outcome, runner = await rig.sync(JobKind.INCREMENTAL, diff_interval=0)  # the customer diff is due
    assert outcome.status is JobStatus.COMPLETED, outcome.error
    assert runner.progress.entities["customers"].processed == 1
    row = query(rig.database_url, "SELECT payload->>'first_name' FROM records WHERE entity='customers'"
                " AND external_id='5'")
    assert row == [("Zelda",)]
    assert query(rig.database_url, "SELECT payload->>'status' FROM records WHERE entity='orders'"
                 " AND external_id='10'") == [("completed",)]
    assert query(rig.database_url, "SELECT deleted_at IS NOT NULL FROM records WHERE entity='customers'"
                 " AND external_id='7'") == [(True,)]
    new_id = str(created["id"] if isinstance(created, dict) else created)
    assert query(rig.database_url, "SELECT payload->>'name' FROM records WHERE entity='products'"
                 " AND external_id=%s", new_id) == [("Brand new widget",)]
    assert rig.live("customers") == 229


async def test_full_sync_reconciles_records_gone_without_a_tombstone(rig: Rig) -> None:
    with trio.fail_after(60):
        await rig.sync(JobKind.INITIAL)
    rig.sim.delete("products", 3, force=True)  # force-deleted: WooCommerce keeps no trace
    with trio.fail_after(60):
        outcome, _ = await rig.sync(JobKind.FULL)
    assert outcome.status is JobStatus.COMPLETED
    assert query(rig.database_url, "SELECT deleted_at IS NOT NULL FROM records WHERE entity='products'"
                 " AND external_id='3'") == [(True,)]
    assert rig.live("products") == 22


async def test_cancel_keeps_what_was_committed_and_resume_continues(rig: Rig) -> None:
    control = JobControl()
    control.set(ControlRequest.CANCEL)  # takes effect at the first page boundary
    with trio.fail_after(60):
        outcome, _ = await rig.sync(JobKind.INITIAL, control, batch=100, page_concurrency=1)
    assert outcome.status is JobStatus.CANCELLED
    committed = rig.live("customers")
    assert committed == 100  # one page: one commit, then the cancel
    cursor = query(rig.database_url, "SELECT state FROM cursors WHERE entity = 'customers'")[0][0]
    assert cursor["phase"] == "full" and cursor["page"] * 100 >= committed  # type: ignore[index]
    # the next full sync resumes after the committed page and completes the listing
    with trio.fail_after(60):
        outcome, _ = await rig.sync(JobKind.FULL)
    assert outcome.status is JobStatus.COMPLETED
    assert rig.live("customers") == 230


async def test_rejected_credentials_fail_the_job_as_reauth_required(rig: Rig) -> None:
    job, _ = await rig.store.call(jobs.create_job, rig.connection_id, JobKind.INITIAL, "test")
    bad = ConnectionSettings("shop", "woocommerce", rig.url,
                             credentials={"consumer_key": "ck_test", "consumer_secret": "wrong"})
    connector = WooCommerceConnector(bad)
    with trio.fail_after(30):
        outcome = await JobRunner(rig.store, connector, rig.connection_id, job, JobControl()).run()
    await connector.aclose()
    assert outcome.status is JobStatus.FAILED and outcome.reauth_required
    assert "401" in (outcome.error or "")


async def test_between_diffs_incremental_customers_fetch_only_new_ones(rig: Rig) -> None:
    with trio.fail_after(60):
        await rig.sync(JobKind.INITIAL)
    rig.sim.update("customers", 5, first_name="Edited")  # seen at the next diff, not now
    new = rig.sim.create("customers", email="new@example.com")
    rig.sim.app.stats.clear()
    with trio.fail_after(60):
        outcome, runner = await rig.sync(JobKind.INCREMENTAL)
    assert outcome.status is JobStatus.COMPLETED
    assert runner.progress.entities["customers"].processed == 1
    assert rig.sim.app.stats["/wp-json/wc/v3/customers"] == 1  # one request, newest first
    assert query(rig.database_url, "SELECT payload->>'email' FROM records WHERE entity='customers'"
                 " AND external_id=%s", str(new["id"])) == [("new@example.com",)]
    assert query(rig.database_url, "SELECT payload->>'first_name' FROM records WHERE entity='customers'"
                 " AND external_id='5'") != [("Edited",)]
    with trio.fail_after(60):
        await rig.sync(JobKind.INCREMENTAL, diff_interval=0)
    assert query(rig.database_url, "SELECT payload->>'first_name' FROM records WHERE entity='customers'"
                 " AND external_id='5'") == [("Edited",)]


async def test_an_orders_window_that_shifts_keeps_its_start_and_infers_nothing(nursery: trio.Nursery) -> None:
    from freshd.connectors.base import Page, SyncMode
    from freshd.connectors.woocommerce.connector import ORDERS
    from tests.rig import CollectPages

    sim = WooCommerceSimulator(records=0, orders=300, products=1, seed=3, credentials=CREDS)
    port = await nursery.start(functools.partial(serve_asgi, sim.app, host="127.0.0.1", port=0))

    class EditAfterFirstPage(CollectPages):
        async def emit(self, page: Page) -> None:
            if not self.pages:
                last = sim.collections["orders"].by_modified[-1][1]  # on the last page
                sim.delete("orders", last, force=True)  # X-WP-Total drops: later pages move
            await super().emit(page)

    connector = WooCommerceConnector(ConnectionSettings("shop", "woocommerce", f"http://127.0.0.1:{port}",
                                                        credentials=CREDS, options={"page_concurrency": 1}))
    try:
        for mode, state in ((SyncMode.FULL, {}), (SyncMode.INCREMENTAL, {"cursor": "2000-01-01T00:00:00"})):
            ctx = EditAfterFirstPage()
            with trio.fail_after(30):
                await connector.sync_entity(ORDERS, state, mode, ctx)
            assert len(ctx.pages) == 3 and not any(page.listing_complete for page in ctx.pages)
            assert ctx.pages[-1].checkpoint == {**state, "cursor": state.get("cursor")}  # the window is read again
    finally:
        await connector.aclose()


async def test_options_are_read_as_one_dataclass_with_their_defaults() -> None:
    from freshd.connectors.woocommerce.connector import OAuth1, QueryKeys, WooCommerceOptions, build_auth

    connector = WooCommerceConnector(ConnectionSettings("shop", "woocommerce", "http://x", credentials=CREDS,
                                                        options={"entities": ["orders"], "page_concurrency": 2}))
    await connector.aclose()
    assert connector.options == WooCommerceOptions(auth=None, diff_interval=6 * 3600.0)
    assert connector.concurrency == 2  # a framework option, allowed beside the provider's own
    tuned = WooCommerceConnector(ConnectionSettings("shop", "woocommerce", "https://x", credentials=CREDS,
                                                    options={"auth": "query", "diff_interval": 60}))
    await tuned.aclose()
    assert tuned.options == WooCommerceOptions(auth="query", diff_interval=60.0)
    # no `auth`: Basic over HTTPS, OAuth 1.0a over plain HTTP (as WooCommerce requires)
    assert isinstance(build_auth(connector.settings, None), OAuth1)
    assert isinstance(build_auth(tuned.settings, None), httpx.BasicAuth)
    assert isinstance(build_auth(tuned.settings, "query"), QueryKeys)


@pytest.mark.parametrize(("options", "problems"), [
    ({"diff_intreval": 60},
     ["connection shop: options.diff_intreval: unknown key 'diff_intreval'; valid keys: auth, diff_interval, "
      "entities, page_concurrency, rate_burst, rate_group, rate_limit, rate_limits"]),
    ({"auth": "magic", "diff_interval": -1},
     ["connection shop: options.auth: option auth must be one of basic, query, oauth1, got 'magic'",
      "connection shop: options.diff_interval: option diff_interval must be a number of seconds >= 0, got -1"]),
    ({"auth": 5, "diff_interval": "6h"},
     ["connection shop: options.auth: expected a string, got an integer",
      "connection shop: options.diff_interval: expected a number, got a string"]),
])
def test_bad_options_are_refused_naming_each_key_all_at_once(options: dict[str, Any], problems: list[str]) -> None:
    from freshd.connectors.base import check_settings
    from freshd.errors import ConfigError, ConfigErrors

    settings = ConnectionSettings("shop", "woocommerce", "http://x", credentials=CREDS, options=options)
    for refuse in (check_settings, WooCommerceConnector):  # before anything is stored, and at start
        with pytest.raises(ConfigError) as caught:
            refuse(settings)
        found = caught.value.errors if isinstance(caught.value, ConfigErrors) else [caught.value]
        assert [str(e) for e in found] == problems
