"""Odoo: both transports end to end, the error envelope, and the keyset under a live table."""

from __future__ import annotations

import functools
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import trio

from freshd.connectors.base import ConnectionSettings, Page, SyncMode
from freshd.connectors.odoo.connector import OdooConnector, classify, classify_error
from freshd.connectors.odoo.simulator import OdooSimulator
from freshd.connectors.paginators import KeysetPaging
from freshd.connectors.simulator import serve_asgi
from freshd.errors import ConfigError, ConfigErrors, PermanentError, RateLimited, ReauthRequired, TransientError
from freshd.progress import JobControl, JobProgress
from freshd.store import jobs
from freshd.store.jobs import JobKind, JobRow, JobStatus
from freshd.sync import JobRunner
from tests.rig import CollectPages, Rig, open_rig

CREDS = {"database": "acme", "username": "api@acme.example", "api_key": "0d1f2e3c4b5a69788796"}


def settings_fn(**options: Any) -> Any:
    return lambda url: ConnectionSettings(
        "erp", "odoo", url, credentials={"api_key": CREDS["api_key"]},
        options={"database": CREDS["database"], "username": CREDS["username"], "page_size": 40, **options})


async def completed(rig: Rig, kind: JobKind = JobKind.INITIAL, **options: Any) -> Any:
    with trio.fail_after(30):
        outcome, runner = await rig.sync(kind, **options)
    assert outcome.status is JobStatus.COMPLETED, outcome.error
    return runner


class Collect(CollectPages):
    """Runs `after_first` once the first page is in (a change made mid-listing)."""

    def __init__(self, after_first: Any = None) -> None:
        super().__init__()
        self.after_first = after_first

    async def emit(self, page: Page) -> None:
        await super().emit(page)
        if self.after_first is not None:
            self.after_first()
            self.after_first = None


@pytest.mark.parametrize("api", ["jsonrpc", "json2"])
async def test_both_transports_sync_everything_and_pick_up_changes(database_url: str, api: str) -> None:
    sim = OdooSimulator(records=90, seed=3, credentials=CREDS)
    sim.write("res.partner", sim.ids["res.partner"][5], active=False)  # archived: synced, kept inactive
    async with open_rig(database_url, sim, settings_fn(api=api)) as rig:
        await completed(rig)
        for entity in ("partners", "sale_orders", "products"):
            assert rig.live(entity) == sim.count(entity)
        archived = rig.record("partners", str(sim.ids["res.partner"][5]))
        assert archived is not None and archived[0]["active"] is False
        changed = sim.mutate("partners")
        sim.app.requests.clear()
        runner = await completed(rig, JobKind.INCREMENTAL)
        # the incremental listing reads from the cursor on, not the whole table
        assert runner.progress.entities["partners"].processed < 10
        updated = rig.record("partners", str(changed["updated"]))
        assert updated is not None and str(updated[0]["phone"]).startswith("changed")
        assert rig.record("partners", str(changed["created"])) is not None
        deleted = rig.record("partners", str(changed["deleted"]))
        assert deleted is not None and deleted[1] is not None  # the id reconciliation found the hard delete
    paths = {path for path, _ in sim.app.requests}
    if api == "json2":
        assert paths and all(p.startswith("/json/2/") for p in paths)
    else:
        assert paths == {"/jsonrpc"}


async def test_a_record_created_while_its_listing_runs_raises_the_finished_total_instead_of_passing_it(
    database_url: str,
) -> None:
    # the demo showed `sale_orders 2001/2000` for a completed job: Odoo's count is taken as the
    # listing starts, and an order written in the second the listing's window closes at is listed too
    frozen = datetime.now(UTC).replace(microsecond=0)
    sim = OdooSimulator(records=120, seed=3, credentials=CREDS, clock=lambda: frozen)
    created: list[Any] = []

    def create_one_order_midway(job: JobRow, progress: JobProgress) -> None:
        orders = progress.entities["sale_orders"]
        if not created and orders.state == "running" and orders.total is not None:  # counted, being listed
            created.append(sim.entities["sale_orders"].create())

    async with open_rig(database_url, sim, settings_fn()) as rig:
        job, _ = await rig.store.call(jobs.create_job, rig.connection_id, JobKind.INITIAL, "test")
        connector = rig.connector()
        try:
            runner = JobRunner(rig.store, connector, rig.connection_id, job, JobControl(),
                               on_progress=create_one_order_midway)
            with trio.fail_after(30):
                outcome = await runner.run()
        finally:
            await connector.aclose()
        assert outcome.status is JobStatus.COMPLETED, outcome.error
        assert created and rig.live("sale_orders") == 121
        orders = runner.progress.entities["sale_orders"]
        assert (orders.processed, orders.total, orders.estimated) == (121, 121, False)


async def test_a_record_modified_mid_listing_is_not_skipped(nursery: trio.Nursery) -> None:
    # Offset paging skips one record here: a record already read moves to the end, the rest shift left.
    sim = OdooSimulator(records=120, seed=8, credentials=CREDS)
    port = await nursery.start(functools.partial(serve_asgi, sim.app, "127.0.0.1", 0))
    connector = OdooConnector(settings_fn()(f"http://127.0.0.1:{port}"))
    first = sim.ids["res.partner"][0]
    ctx = Collect(after_first=lambda: sim.write("res.partner", first, phone="moved"))
    with trio.fail_after(20):
        await connector.sync_entity(connector.stream("partners"), None, SyncMode.FULL, ctx)
    await connector.aclose()
    seen = {str(r["id"]) for p in ctx.pages for r in p.records}
    assert seen == {str(i) for i in sim.ids["res.partner"]}
    assert ctx.pages[-1].listing_complete


async def test_a_resumed_listing_continues_after_the_committed_page(nursery: trio.Nursery) -> None:
    sim = OdooSimulator(records=120, seed=9, credentials=CREDS)
    port = await nursery.start(functools.partial(serve_asgi, sim.app, "127.0.0.1", 0))
    connector = OdooConnector(settings_fn()(f"http://127.0.0.1:{port}"))
    ctx = Collect()
    await connector.sync_entity(connector.stream("partners"), None, SyncMode.FULL, ctx)
    middle = ctx.pages[1].checkpoint
    assert middle is not None and "listing" in middle
    resumed = Collect()
    await connector.sync_entity(connector.stream("partners"), middle, SyncMode.FULL, resumed)
    await connector.aclose()
    before = [str(r["id"]) for p in ctx.pages[:2] for r in p.records]
    after = [str(r["id"]) for p in resumed.pages for r in p.records]
    assert not set(before) & set(after)
    assert sorted(before + after, key=int) == sorted((str(i) for i in sim.ids["res.partner"]), key=int)
    assert not resumed.pages[-1].listing_complete  # a resumed listing never marks deletions


async def test_retry_reads_by_id_archived_included_and_gone_ids_are_tombstones(nursery: trio.Nursery) -> None:
    sim = OdooSimulator(records=30, seed=4, credentials=CREDS)
    port = await nursery.start(functools.partial(serve_asgi, sim.app, "127.0.0.1", 0))
    archived, kept, gone = sim.ids["res.partner"][:3]
    sim.write("res.partner", archived, active=False)
    sim.delete("res.partner", gone)
    connector = OdooConnector(settings_fn(page_size=2)(f"http://127.0.0.1:{port}"))
    ctx = CollectPages()
    with trio.fail_after(20):
        await connector.fetch_items(connector.stream("partners"), [str(archived), str(kept), str(gone), "x"], ctx)
    await connector.aclose()
    first, second = ctx.pages  # page_size ids a read; an id that is no integer is not asked for
    assert [r["id"] for r in first.records] == [archived, kept] and not first.deleted
    assert first.records[0]["active"] is False and set(first.records[0]) == {"id", *connector.fields["partners"]}
    assert not second.records and list(second.deleted) == [str(gone)]


@pytest.mark.parametrize("api", ["jsonrpc", "json2"])
async def test_a_wrong_key_is_reauth_required(database_url: str, api: str) -> None:
    sim = OdooSimulator(records=10, seed=1, credentials=CREDS)
    sim.new_api_key()
    async with open_rig(database_url, sim, settings_fn(api=api)) as rig:
        with trio.fail_after(30):
            outcome, _ = await rig.sync(JobKind.INITIAL)
    assert outcome.status is JobStatus.FAILED and outcome.reauth_required
    assert sum(1 for path, _ in sim.app.requests) <= 2  # refused once, not retried


def test_the_error_envelope_and_statuses_map_to_the_taxonomy() -> None:
    def rpc_error(name: str, message: str = "boom", code: int = 200) -> httpx.Response:
        return httpx.Response(200, json={"jsonrpc": "2.0", "id": 1, "error": {
            "code": code, "message": "Odoo Server Error", "data": {"name": name, "message": message}}})

    assert isinstance(classify(rpc_error("odoo.exceptions.AccessDenied")), ReauthRequired)
    assert isinstance(classify(rpc_error("odoo.exceptions.ValidationError")), PermanentError)
    assert isinstance(classify(rpc_error("odoo.exceptions.MissingError")), PermanentError)
    assert isinstance(classify(rpc_error("psycopg2.errors.SerializationFailure")), TransientError)
    assert isinstance(classify(rpc_error("odoo.http.SessionExpiredException", code=100)), TransientError)
    assert isinstance(classify(rpc_error("something.Unknown")), PermanentError)  # raised on purpose
    assert classify(httpx.Response(200, json={"jsonrpc": "2.0", "id": 1, "result": [1, 2]})) is None
    assert classify(httpx.Response(200, json=[{"id": 1}])) is None  # JSON-2 bodies have no envelope
    assert isinstance(classify(httpx.Response(200, json={"jsonrpc": "2.0", "id": 1})), TransientError)
    json2 = {"name": "odoo.exceptions.AccessDenied", "message": "bad key", "arguments": [], "context": {},
             "debug": ""}
    assert isinstance(classify(httpx.Response(401, json=json2)), ReauthRequired)
    assert isinstance(classify(httpx.Response(422, json={**json2, "name": "odoo.exceptions.UserError"})),
                      PermanentError)
    assert isinstance(classify(httpx.Response(503, json={**json2, "name": "odoo.exceptions.UserError"})),
                      TransientError)
    limited = classify(httpx.Response(429, headers={"Retry-After": "7"}, text="slow down"))
    assert isinstance(limited, RateLimited) and limited.retry_after == 7
    assert isinstance(classify_error("psycopg2.OperationalError", 'database "x" does not exist', status=200),
                      ReauthRequired)  # a wrong database name: the operator fixes the settings
    assert isinstance(classify_error("psycopg2.OperationalError", "server closed the connection", status=200),
                      TransientError)


async def test_an_unknown_model_fails_the_entity_not_the_connection(database_url: str) -> None:
    sim = OdooSimulator(records=20, seed=2, credentials=CREDS)
    del sim.docs["product.product"]  # a database without the module that brings products
    async with open_rig(database_url, sim, settings_fn()) as rig:
        with trio.fail_after(30):
            outcome, _ = await rig.sync(JobKind.INITIAL)
        assert not outcome.reauth_required
        assert rig.live("partners") == sim.count("partners")


def test_settings_name_what_is_missing_or_wrong() -> None:
    def check(credentials: dict[str, str], **options: Any) -> str:
        with pytest.raises(ConfigError) as caught:
            OdooConnector.validate_settings(ConnectionSettings("erp", "odoo", "http://x", credentials=credentials,
                                                               options=options))
        return str(caught.value)

    assert "missing database (" in check({"api_key": "k"}, username="u")
    assert "missing username (" in check({"api_key": "k"}, database="d")
    assert "missing api_key (or password) (" in check({}, database="d", api="json2")  # JSON-2: no login
    assert "unknown api" in check({"api_key": "k"}, database="d", username="u", api="xmlrpc")
    assert "page_size" in check({"api_key": "k"}, database="d", username="u", page_size=0)
    assert "fields" in check({"api_key": "k"}, database="d", username="u", fields={"invoices": ["name"]})
    # database and login may also sit with the credentials (older configurations)
    OdooConnector.validate_settings(ConnectionSettings("erp", "odoo", "http://x", credentials=CREDS))


def test_options_are_one_schema_every_problem_named_at_once() -> None:
    def problems(credentials: dict[str, str], **options: Any) -> list[ConfigError]:
        with pytest.raises(ConfigError) as caught:
            OdooConnector.validate_settings(ConnectionSettings("erp", "odoo", "http://x", credentials=credentials,
                                                               options=options))
        return caught.value.errors if isinstance(caught.value, ConfigErrors) else [caught.value]

    # an unknown key names itself and the valid ones (the framework's too), beside the credentials' problem
    typo, creds = problems({}, databse="acme", username="u")
    assert typo.where == "connection erp: options.databse"
    assert "unknown key 'databse'" in str(typo) and "database" in str(typo) and "page_size" in str(typo)
    assert "rate_limit" in str(typo) and "missing database, api_key (or password) (" in str(creds)
    # the range rules, all of them
    found = problems({"api_key": "k"}, database="d", username="u", api="xmlrpc", page_size=0, lookback=-1,
                     reconcile_interval=0, fields={"invoices": ["name"]})
    assert [e.where for e in found] == [f"connection erp: options.{key}" for key in
                                        ("api", "page_size", "lookback", "reconcile_interval", "fields")]
    assert "unknown api 'xmlrpc'; valid: jsonrpc, json2" in str(found[0])
    assert "expected a number above zero, got 0" in str(found[1])
    assert "unknown stream 'invoices'" in str(found[4]) and "partners, sale_orders, products" in str(found[4])
    (wrong,) = problems({"api_key": "k"}, database="d", username="u", fields={"partners": "name"})
    assert wrong.where == "connection erp: options.fields.partners" and "expected an array" in str(wrong)
    # framework options stay allowed; the options as the connector reads them
    connector = OdooConnector(ConnectionSettings("erp", "odoo", "http://x", credentials={"api_key": "k"}, options={
        "database": "d", "username": "u", "page_size": 7, "entities": ["partners"], "fields": {"partners": ["name"]}}))
    assert (connector.options.page_size, connector.options.api) == (7, "jsonrpc")
    assert connector.fields["partners"] == ["name"]
    assert connector.listed["partners"].listing is not None
    assert connector.listed["partners"].listing.paginator == KeysetPaging(("write_date", "id"), size=7,
                                                                          total_path="total")
