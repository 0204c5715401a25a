"""Checkpoints stored before the listing engine still resume: each provider's upgrade_checkpoint,
driven against its simulator (what the next sync asks for, and the checkpoint it ends with)."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import trio

from freshd.connectors.amazon_sp.connector import AmazonSPConnector, upgrade_checkpoint
from freshd.connectors.amazon_sp.simulator import AmazonSPSimulator
from freshd.connectors.base import ConnectionSettings, Connector, SyncMode
from freshd.connectors.odoo.connector import ODOO_TIME, OdooConnector
from freshd.connectors.odoo.connector import upgrade_checkpoint as odoo_upgrade
from freshd.connectors.odoo.simulator import OdooSimulator
from freshd.connectors.orion.connector import OrionConnector
from freshd.connectors.orion.simulator import OrionSimulator
from freshd.connectors.powens.connector import PowensConnector
from freshd.connectors.powens.simulator import PowensSimulator
from freshd.connectors.simulator import serve_asgi
from freshd.connectors.woocommerce.connector import ORDERS, WooCommerceConnector
from freshd.connectors.woocommerce.connector import upgrade_checkpoint as woo_upgrade
from freshd.connectors.woocommerce.simulator import WooCommerceSimulator
from tests.rig import CollectPages


async def _serve(nursery: trio.Nursery, app: Any) -> str:
    port = await nursery.start(functools.partial(serve_asgi, app, "127.0.0.1", 0))
    return f"http://127.0.0.1:{port}"


async def _sync(connector: Connector, entity: str, state: dict[str, Any] | None,
                mode: SyncMode = SyncMode.INCREMENTAL) -> CollectPages:
    ctx = CollectPages()
    try:
        with trio.fail_after(20):
            await connector.sync_entity(connector.stream(entity), state, mode, ctx)
    finally:
        await connector.aclose()
    return ctx


# --- Powens transactions -------------------------------------------------------------------------

POWENS_CREDS = {"access_token": "powens-test-token"}


@pytest.fixture
async def powens(nursery: trio.Nursery) -> AsyncIterator[tuple[PowensSimulator, str]]:
    sim = PowensSimulator(records=60, seed=21, credentials=POWENS_CREDS)
    yield sim, await _serve(nursery, sim.app)


def _powens(url: str) -> PowensConnector:
    return PowensConnector(ConnectionSettings("bank", "powens", f"{url}/2.0", credentials=POWENS_CREDS,
                                              options={"page_size": 20, "lookback": 60}))


def _powens_filters(sim: PowensSimulator) -> list[str | None]:
    return [query.get("last_update") for path, query in sim.app.requests if path.endswith("/transactions")]


async def test_powens_pre_engine_done_checkpoint_lists_from_its_cursor(
    powens: tuple[PowensSimulator, str],
) -> None:
    sim, url = powens
    ctx = await _sync(_powens(url), "transactions", {"phase": "done", "since": "2024-05-01 10:00:00"})
    assert set(_powens_filters(sim)) == {"2024-05-01 09:59:00"}  # the cursor less the lookback
    last = ctx.pages[-1].checkpoint
    assert last is not None and set(last) == {"cursor"} and last["cursor"] >= "2024-05-01 10:00:00"


async def test_powens_pre_engine_listing_under_way_starts_again_from_the_filter_it_sent(
    powens: tuple[PowensSimulator, str],
) -> None:
    sim, url = powens
    old = {"phase": "listing", "mode": "incremental", "listing_since": "2024-05-01 09:59:00", "offset": 40,
           "listing_started": "2024-05-02 00:00:00", "watermark": "2024-05-01 23:00:00"}
    ctx = await _sync(_powens(url), "transactions", old)
    filters = _powens_filters(sim)
    assert set(filters) == {"2024-05-01 09:58:00"} and len(filters) >= 3  # from the start, not offset 40
    listed = {str(r["id"]) for page in ctx.pages for r in page.records} | \
        {i for page in ctx.pages for i in page.deleted}
    assert listed == {str(t) for t in sim.transactions}  # every row after the old filter: nothing lost


async def test_a_sync_since_never_moves_the_cursor_back(powens: tuple[PowensSimulator, str]) -> None:
    sim, url = powens
    connector = _powens(url)
    future = "2999-01-01 00:00:00"  # a stored cursor ahead of everything the listing will see
    state = connector.since_state(connector.stream("transactions"), {"cursor": future},
                                  datetime(2024, 5, 1, tzinfo=UTC))
    ctx = await _sync(connector, "transactions", state)
    assert set(_powens_filters(sim)) == {"2024-05-01 00:00:00"}
    last = ctx.pages[-1].checkpoint
    assert last is not None and last["cursor"] == future and "floor" not in last


# --- Orion clients and accounts ------------------------------------------------------------------

ORION_CREDS = {"username": "advisor@acme.example", "password": "s3cret-orion", "client_id": "4321",
               "client_secret": "partner-secret"}


@pytest.fixture
async def orion(nursery: trio.Nursery) -> AsyncIterator[tuple[OrionSimulator, str]]:
    sim = OrionSimulator(records=30, seed=22, credentials=ORION_CREDS, history_days=2)
    yield sim, await _serve(nursery, sim.app) + "/api"


def _orion(url: str, **options: Any) -> OrionConnector:
    return OrionConnector(ConnectionSettings("wealth", "orion", url, credentials=ORION_CREDS,
                                             options={"page_size": 10, **options}))


def _orion_filters(sim: OrionSimulator) -> list[str | None]:
    return [query.get("editedStartDate") for path, query in sim.app.requests if path.endswith("/Accounts")]


async def test_orion_pre_engine_done_checkpoint_keeps_its_cursor_and_full_at(
    orion: tuple[OrionSimulator, str],
) -> None:
    sim, url = orion
    full_at = (datetime.now(UTC) - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S")
    old = {"phase": "done", "since": "2024-05-01T10:00:00", "full_at": full_at}
    ctx = await _sync(_orion(url), "accounts", old)
    assert set(_orion_filters(sim)) == {"2024-05-01T09:55:00"}  # less the 300 s lookback
    last = ctx.pages[-1].checkpoint
    assert last is not None and last["full_at"] == full_at and last["cursor"] >= "2024-05-01T10:00:00"
    assert not ctx.pages[-1].listing_complete  # an incremental listing infers nothing


async def test_orion_pre_engine_full_listing_under_way_is_read_again_whole(
    orion: tuple[OrionSimulator, str],
) -> None:
    sim, url = orion
    old = {"phase": "listing", "mode": "full", "full": True, "skip": 20, "last_id": 20, "shifted": False,
           "listing_since": None, "listing_started": "2024-05-02T00:00:00", "watermark": "2024-05-01T00:00:00"}
    ctx = await _sync(_orion(url), "accounts", old, SyncMode.FULL)
    assert set(_orion_filters(sim)) == {None}
    assert {str(r["id"]) for page in ctx.pages for r in page.records} == {str(a) for a in sim.accounts}
    assert ctx.pages[-1].listing_complete  # read whole in this run: it may reconcile
    assert ctx.pages[-1].checkpoint is not None and "full_at" in ctx.pages[-1].checkpoint


async def test_orion_plain_paging_pages_with_top_and_skip(orion: tuple[OrionSimulator, str]) -> None:
    sim, url = orion
    ctx = await _sync(_orion(url, paging="plain"), "clients", None, SyncMode.FULL)
    pages = [query for path, query in sim.app.requests if path.endswith("/Clients")]
    assert pages and all("skip" in q and "$skip" not in q for q in pages)
    assert {str(r["id"]) for page in ctx.pages for r in page.records} == {str(c) for c in sim.clients}


# --- Amazon SP-API: inventory_summaries ---------------------------------------------------------------
# before: {"phase": "done", "since": {marketplace: listing start - 5 min}, "full_at"}, and while a run
# was under way {"phase": "listing", "mode", "full", "started", "done": [marketplaces], "since", "full_at"}

AMAZON_CREDS = {"refresh_token": "Atzr|upgrade", "client_id": "amzn1.application-oa2-client.upgrade",
                "client_secret": "amzn1.oa2-cs.v1.upgrade"}
US, CA = "ATVPDKIKX0DER", "A2EUQ1WTGCTBG2"
INVENTORY = "/fba/inventory/v1/summaries"


def amazon_iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


async def amazon_inventory(nursery: trio.Nursery, sim: AmazonSPSimulator, state: dict[str, Any] | None,
                           mode: SyncMode, marketplaces: list[str]) -> CollectPages:
    port = await nursery.start(functools.partial(serve_asgi, sim.app, "127.0.0.1", 0))
    connector = AmazonSPConnector(ConnectionSettings(
        "amazon", "amazon_sp", f"http://127.0.0.1:{port}", credentials=AMAZON_CREDS,
        options={"marketplace_ids": marketplaces, "token_url": "/auth/o2/token"}))
    ctx = CollectPages()
    sim.app.requests.clear()
    with trio.fail_after(20):
        await connector.sync_entity(connector.stream("inventory_summaries"), state, mode, ctx)
    await connector.aclose()
    return ctx


def amazon_asked(sim: AmazonSPSimulator) -> list[dict[str, str]]:
    return [q for path, q in sim.app.requests if path == INVENTORY]


def test_amazon_upgrade_reads_both_old_shapes() -> None:
    done = {"phase": "done", "since": {US: "2025-03-01T11:55:00Z"}, "full_at": "2025-03-01T00:00:00Z"}
    assert upgrade_checkpoint(done) == {"marketplaces": {US: {"cursor": "2025-03-01T12:00:00Z"}},
                                        "full_at": "2025-03-01T00:00:00Z"}
    listing = {"phase": "listing", "mode": "incremental", "full": False, "started": "2025-03-02T00:00:00Z",
               "done": [US], "since": {US: "2025-03-01T23:55:00Z", CA: "2025-03-01T11:55:00Z"}, "full_at": None}
    assert upgrade_checkpoint(listing) == {
        "marketplaces": {US: {"cursor": "2025-03-02T00:00:00Z"}, CA: {"cursor": "2025-03-01T12:00:00Z"}},
        "full_at": None,
        "run": {"mode": "incremental", "full": False, "started": "2025-03-02T00:00:00Z", "done": [US]}}
    assert upgrade_checkpoint({"phase": "done", "since": {}, "full_at": None}) == {"marketplaces": {},
                                                                                  "full_at": None}
    assert upgrade_checkpoint(None) == {}
    new = {"marketplaces": {US: {"cursor": "2025-03-01T12:00:00Z"}}, "full_at": None}
    assert upgrade_checkpoint(new) == new  # today's shape passes through


async def test_amazon_old_done_checkpoint_filters_from_its_since(nursery: trio.Nursery) -> None:
    sim = AmazonSPSimulator(records=60, seed=11, credentials=AMAZON_CREDS)
    now = datetime.now(UTC)
    since = amazon_iso(now - timedelta(hours=1))
    full_at = amazon_iso(now - timedelta(hours=2))  # a full listing is not due yet
    changed = sorted(sim.inventory[US])[:3]
    for sku in changed:
        sim.update_sku(US, sku, totalQuantity=1)
    old = {"phase": "done", "since": {US: since}, "full_at": full_at}
    ctx = await amazon_inventory(nursery, sim, old, SyncMode.INCREMENTAL, [US])
    assert [q.get("startDateTime") for q in amazon_asked(sim)] == [since]  # the old position, exactly
    assert sorted(r["sellerSku"] for p in ctx.pages for r in p.records) == changed  # nothing lost, nothing more
    last = ctx.pages[-1]
    assert last.checkpoint is not None and "run" not in last.checkpoint and last.checkpoint["full_at"] == full_at
    cursor = datetime.fromisoformat(last.checkpoint["marketplaces"][US]["cursor"])
    assert now - timedelta(minutes=1) < cursor <= datetime.now(UTC) + timedelta(seconds=1)
    assert not any(p.listing_complete or p.full_listing for p in ctx.pages)


async def test_amazon_old_run_under_way_skips_the_finished_marketplace(nursery: trio.Nursery) -> None:
    sim = AmazonSPSimulator(records=30, seed=12, credentials=AMAZON_CREDS, marketplaces=(US, CA))
    now = datetime.now(UTC)
    us_since, ca_since = amazon_iso(now - timedelta(minutes=10)), amazon_iso(now - timedelta(hours=3))
    full_at = amazon_iso(now - timedelta(hours=4))
    sim.update_sku(CA, sorted(sim.inventory[CA])[0], totalQuantity=2)
    old = {"phase": "listing", "mode": "incremental", "full": False, "started": amazon_iso(now - timedelta(minutes=5)),
           "done": [US], "since": {US: us_since, CA: ca_since}, "full_at": full_at}
    ctx = await amazon_inventory(nursery, sim, old, SyncMode.INCREMENTAL, [US, CA])
    asked = amazon_asked(sim)
    assert [(q["marketplaceIds"], q.get("startDateTime")) for q in asked] == [(CA, ca_since)]
    assert [r["marketplaceId"] for p in ctx.pages for r in p.records] == [CA]
    last = ctx.pages[-1].checkpoint
    assert last is not None and "run" not in last and last["full_at"] == full_at
    assert last["marketplaces"][US] == {"cursor": amazon_iso(datetime.fromisoformat(us_since) + timedelta(minutes=5))}
    assert not any(p.listing_complete for p in ctx.pages)


async def test_amazon_old_full_run_under_way_lists_the_rest_whole_but_infers_nothing(
        nursery: trio.Nursery) -> None:
    sim = AmazonSPSimulator(records=30, seed=13, credentials=AMAZON_CREDS, marketplaces=(US, CA))
    now = datetime.now(UTC)
    old = {"phase": "listing", "mode": "full", "full": True, "started": amazon_iso(now - timedelta(minutes=5)),
           "done": [US], "since": {US: amazon_iso(now - timedelta(minutes=10))}, "full_at": None}
    ctx = await amazon_inventory(nursery, sim, old, SyncMode.FULL, [US, CA])
    asked = amazon_asked(sim)
    assert {q["marketplaceIds"] for q in asked} == {CA} and not any("startDateTime" in q for q in asked)
    assert len({r["id"] for p in ctx.pages for r in p.records}) == len(sim.inventory[CA])
    assert all(p.full_listing for p in ctx.pages) and not any(p.listing_complete for p in ctx.pages)
    last = ctx.pages[-1].checkpoint
    assert last is not None and last["full_at"] is None and set(last["marketplaces"]) == {US, CA}
    # the next sync: a full listing is still due (the resumed one reconciled nothing)
    again = await amazon_inventory(nursery, sim, last, SyncMode.INCREMENTAL, [US, CA])
    assert not any("startDateTime" in q for q in amazon_asked(sim))
    assert again.pages[-1].listing_complete


async def test_amazon_two_marketplaces_one_empty_still_reconcile(nursery: trio.Nursery) -> None:
    sim = AmazonSPSimulator(records=20, seed=14, credentials=AMAZON_CREDS, marketplaces=(US, CA))
    for sku in list(sim.inventory[CA]):
        sim.delete_sku(CA, sku)
    ctx = await amazon_inventory(nursery, sim, None, SyncMode.FULL, [US, CA])
    assert [p.listing_complete for p in ctx.pages][-1] and not any(p.listing_complete for p in ctx.pages[:-1])
    state = ctx.pages[-1].checkpoint
    assert state is not None and state["full_at"] is not None and set(state["marketplaces"]) == {US, CA}
    # incremental: each marketplace from its own listing's start, minus the 5-minute overlap
    await amazon_inventory(nursery, sim, state, SyncMode.INCREMENTAL, [US, CA])
    sent = {q["marketplaceIds"]: q["startDateTime"] for q in amazon_asked(sim)}
    for marketplace in (US, CA):
        cursor = datetime.fromisoformat(state["marketplaces"][marketplace]["cursor"])
        assert sent[marketplace] == amazon_iso(cursor - timedelta(minutes=5))


# --- WooCommerce orders/products: the `_window` checkpoints -------------------------------------------

WOO_CREDS = {"consumer_key": "ck_upgrade", "consumer_secret": "cs_upgrade"}
WOO_FAR = "9999-12-31T23:59:59"


@pytest.fixture
async def woo(nursery: trio.Nursery) -> AsyncIterator[tuple[WooCommerceSimulator, WooCommerceConnector]]:
    sim = WooCommerceSimulator(records=0, orders=350, products=1, seed=11, credentials=WOO_CREDS)
    port = await nursery.start(functools.partial(serve_asgi, sim.app, "127.0.0.1", 0))
    connector = WooCommerceConnector(ConnectionSettings(
        "shop", "woocommerce", f"http://127.0.0.1:{port}", credentials=WOO_CREDS, options={"page_concurrency": 2}))
    yield sim, connector
    await connector.aclose()


def woo_window(sim: WooCommerceSimulator, after: str | None, before: str) -> list[str]:
    """The order ids a window (after, before) lists (both strict), in WooCommerce's order."""
    return [str(rid) for modified, rid in sim.collections["orders"].by_modified
            if (after is None or modified > after) and modified < before]


def woo_modified(sim: WooCommerceSimulator) -> list[str]:
    return [modified for modified, _ in sim.collections["orders"].by_modified]


def woo_asked(sim: WooCommerceSimulator) -> list[dict[str, str]]:
    return [query for path, query in sim.app.requests if path.endswith("/orders")]


def woo_listed(ctx: CollectPages) -> list[str]:
    return [str(record["id"]) for page in ctx.pages for record in page.records]


def woo_end(until: str) -> str:
    """Where the next window starts after one closed at `until`: 2 s before (both bounds strict)."""
    return (datetime.fromisoformat(until) - timedelta(seconds=2)).isoformat()


async def woo_sync(connector: WooCommerceConnector, state: dict[str, object], mode: SyncMode) -> CollectPages:
    ctx = CollectPages()
    with trio.fail_after(30):
        await connector.sync_entity(ORDERS, state, mode, ctx)
    return ctx


async def test_woo_done_checkpoint_lists_what_changed_after_its_since(
    woo: tuple[WooCommerceSimulator, WooCommerceConnector],
) -> None:
    sim, connector = woo
    since = woo_modified(sim)[200]
    ctx = await woo_sync(connector, {"phase": "done", "since": since}, SyncMode.INCREMENTAL)
    assert {q.get("modified_after") for q in woo_asked(sim)} == {since}
    assert woo_listed(ctx) == woo_window(sim, since, WOO_FAR)  # everything after it, nothing before
    end = ctx.pages[-1].checkpoint
    assert end is not None and set(end) == {"cursor"}
    now = datetime.now(UTC).replace(tzinfo=None)
    assert (now - timedelta(seconds=30)).isoformat() < end["cursor"] <= now.isoformat()
    assert not any(page.full_listing for page in ctx.pages)


async def test_woo_window_under_way_resumes_at_the_next_page_of_the_same_window(
    woo: tuple[WooCommerceSimulator, WooCommerceConnector],
) -> None:
    sim, connector = woo
    modified = woo_modified(sim)
    since, until = modified[20], modified[300]
    window = woo_window(sim, since, until)
    assert len(window) > 200  # three pages
    state = {"phase": "window", "mode": "incremental", "since": since, "until": until, "page": 1}
    ctx = await woo_sync(connector, state, SyncMode.INCREMENTAL)
    asked = woo_asked(sim)
    assert sorted(q["page"] for q in asked) == ["2", "3"]  # page 1 was committed
    assert all(q["modified_after"] == since and q["modified_before"] == until for q in asked)
    assert woo_listed(ctx) == window[100:]
    assert not any(page.listing_complete for page in ctx.pages)
    assert ctx.pages[-1].checkpoint == {"cursor": woo_end(until)}


async def test_woo_full_window_under_way_resumes_unfiltered(
    woo: tuple[WooCommerceSimulator, WooCommerceConnector],
) -> None:
    sim, connector = woo
    until = woo_modified(sim)[330]
    window = woo_window(sim, None, until)
    state = {"phase": "window", "mode": "full", "since": None, "until": until, "page": 2}
    ctx = await woo_sync(connector, state, SyncMode.FULL)
    asked = woo_asked(sim)
    assert sorted(q["page"] for q in asked) == ["3", "4"]
    assert all("modified_after" not in q and q["modified_before"] == until for q in asked)
    assert woo_listed(ctx) == window[200:]
    # a resumed listing was not read whole in this run: no deletions are inferred from it
    assert all(page.full_listing for page in ctx.pages) and not any(page.listing_complete for page in ctx.pages)
    assert ctx.pages[-1].checkpoint == {"cursor": woo_end(until)}


async def test_woo_incremental_window_met_by_a_full_sync_starts_over(
    woo: tuple[WooCommerceSimulator, WooCommerceConnector],
) -> None:
    sim, connector = woo
    modified = woo_modified(sim)
    state = {"phase": "window", "mode": "incremental", "since": modified[20], "until": modified[300], "page": 1}
    ctx = await woo_sync(connector, state, SyncMode.FULL)
    asked = woo_asked(sim)
    assert sorted(q["page"] for q in asked) == ["1", "2", "3", "4"]
    assert not any("modified_after" in q for q in asked)
    # a new window: closed at the server's clock once its first page is read
    assert all(q["modified_before"] > modified[-1] for q in asked if q["page"] != "1")
    assert sorted(woo_listed(ctx)) == sorted(woo_window(sim, None, WOO_FAR))
    assert ctx.pages[-1].listing_complete


async def test_woo_since_from_an_old_checkpoint_keeps_its_cursor_as_the_floor(
    woo: tuple[WooCommerceSimulator, WooCommerceConnector],
) -> None:
    sim, connector = woo
    stored = woo_modified(sim)[-1]
    state = connector.since_state(ORDERS, {"phase": "done", "since": stored}, datetime(2000, 1, 1, tzinfo=UTC))
    assert state == {"cursor": "2000-01-01T00:00:00", "floor": stored}
    ctx = await woo_sync(connector, state, SyncMode.INCREMENTAL)
    assert sorted(woo_listed(ctx)) == sorted(woo_window(sim, None, WOO_FAR))
    end = ctx.pages[-1].checkpoint
    assert end is not None and end["cursor"] >= stored


def test_woo_upgrade_leaves_engine_checkpoints_alone() -> None:
    assert woo_upgrade(ORDERS, None) == {}
    assert woo_upgrade(ORDERS, {"phase": "done", "since": None}) == {}
    engine = {"cursor": "2026-01-01T00:00:00", "listing": {"v": 1, "pager": {"page": 3}}}
    assert woo_upgrade(ORDERS, engine) == engine


# --- Odoo: {"phase": "listing", "mode", "position_date", "position_id", "since", "listing_started"}
# --- and {"phase": "done", "since", "reconciled_at"?} ---------------------------------------------

ODOO_CREDS = {"database": "acme", "username": "api@acme.example", "api_key": "0d1f2e3c4b5a69788796"}


def _odoo_settings(url: str) -> ConnectionSettings:
    return ConnectionSettings("erp", "odoo", url, credentials={"api_key": ODOO_CREDS["api_key"]},
                              options={"database": "acme", "username": ODOO_CREDS["username"], "page_size": 40})


async def _odoo_sync(nursery: trio.Nursery, sim: OdooSimulator, state: dict[str, Any] | None,
                     mode: SyncMode) -> CollectPages:
    return await _sync(OdooConnector(_odoo_settings(await _serve(nursery, sim.app))), "partners", state, mode)


def _odoo_keyed(sim: OdooSimulator) -> list[tuple[str, int]]:
    """The partners in keyset order, (write_date, id)."""
    return sorted((str(r["write_date"]), int(r["id"])) for r in sim.docs["res.partner"].values())


def _odoo_listed(ctx: CollectPages) -> list[int]:
    return [int(r["id"]) for p in ctx.pages for r in p.records]


def _odoo_minus(moment: str, seconds: float) -> str:
    when = datetime.strptime(moment, ODOO_TIME).replace(tzinfo=UTC) - timedelta(seconds=seconds)
    return when.strftime(ODOO_TIME)


def test_odoo_upgrade_shapes() -> None:
    listed = OdooConnector(_odoo_settings("http://x")).listed["partners"]
    assert odoo_upgrade(listed, None) == {}
    assert odoo_upgrade(listed, {"cursor": "2024-05-01 00:00:00"}) == {"cursor": "2024-05-01 00:00:00"}
    done = {"phase": "done", "since": "2024-05-01 10:00:00", "reconciled_at": "2024-05-01 09:00:00"}
    assert odoo_upgrade(listed, done) == {"cursor": "2024-05-01 10:00:00", "reconciled_at": "2024-05-01 09:00:00"}
    assert odoo_upgrade(listed, {"phase": "done", "since": "2024-05-01 10:00:00"}) == \
        {"cursor": "2024-05-01 10:00:00"}
    under_way = {"phase": "listing", "mode": "incremental", "position_date": "2024-05-01 10:00:00",
                 "position_id": 17, "since": "2024-05-01 10:00:00", "listing_started": "2024-05-01 11:00:00"}
    upgraded = odoo_upgrade(listed, under_way)
    assert upgraded["cursor"] == "2024-05-01 10:00:00"
    assert upgraded["listing"]["pager"] == {"key": ["2024-05-01 10:00:00", 17]}
    assert upgraded["listing"]["since"] == "2024-05-01 09:59:00" and not upgraded["listing"]["full"]  # lookback 60 s
    full = odoo_upgrade(listed, {**under_way, "mode": "full"})
    assert full["listing"]["full"] and full["listing"]["since"] is None
    # an unreadable position: the cursor alone (the next listing starts from it)
    assert odoo_upgrade(listed, {**under_way, "position_date": None, "position_id": "x"}) == \
        {"cursor": "2024-05-01 10:00:00"}


async def test_odoo_old_done_checkpoint_lists_from_its_watermark_and_keeps_reconciled_at(
        nursery: trio.Nursery) -> None:
    sim = OdooSimulator(records=120, seed=4, credentials=ODOO_CREDS)
    keyed = _odoo_keyed(sim)
    since = keyed[80][0]
    reconciled = datetime.now(UTC).strftime(ODOO_TIME)  # recent: no id reconciliation in this run
    ctx = await _odoo_sync(nursery, sim, {"phase": "done", "since": since, "reconciled_at": reconciled},
                           SyncMode.INCREMENTAL)
    start = _odoo_minus(since, 60)  # the old code's start: the watermark minus the lookback
    assert sorted(_odoo_listed(ctx)) == sorted(i for w, i in keyed if w >= start)
    last = ctx.pages[-1].checkpoint
    assert last == {"reconciled_at": reconciled, "cursor": keyed[-1][0]}
    assert not any(p.full_listing for p in ctx.pages)


async def test_odoo_old_incremental_listing_resumes_after_its_key(nursery: trio.Nursery) -> None:
    sim = OdooSimulator(records=120, seed=5, credentials=ODOO_CREDS)
    keyed = _odoo_keyed(sim)
    at = keyed[50]
    old = {"phase": "listing", "mode": "incremental", "position_date": at[0], "position_id": at[1],
           "since": at[0], "listing_started": "2024-05-01 11:00:00", "reconciled_at": "2000-01-01 00:00:00"}
    ctx = await _odoo_sync(nursery, sim, old, SyncMode.INCREMENTAL)
    assert _odoo_listed(ctx) == [i for _, i in keyed[51:]]  # exactly the rest, in order: nothing twice
    assert not ctx.pages[-1].listing_complete
    # no id reconciliation while a listing is under way (it was due); its time is kept
    assert ctx.pages[-1].checkpoint == {"reconciled_at": "2000-01-01 00:00:00", "cursor": keyed[-1][0]}


async def test_odoo_old_full_listing_resumes_after_its_key(nursery: trio.Nursery) -> None:
    sim = OdooSimulator(records=120, seed=6, credentials=ODOO_CREDS)
    keyed = _odoo_keyed(sim)
    at = keyed[39]
    old = {"phase": "listing", "mode": "full", "position_date": at[0], "position_id": at[1], "since": at[0],
           "listing_started": "2024-05-01 11:00:00"}
    ctx = await _odoo_sync(nursery, sim, old, SyncMode.FULL)
    assert _odoo_listed(ctx) == [i for _, i in keyed[40:]]
    assert all(p.full_listing for p in ctx.pages)
    assert not ctx.pages[-1].listing_complete  # resumed: never marks deletions
    assert ctx.pages[-1].checkpoint == {"cursor": keyed[-1][0]}
    # the same old listing met by an incremental job starts from its watermark, as the old code did
    ctx = await _odoo_sync(nursery, sim, old, SyncMode.INCREMENTAL)
    assert sorted(_odoo_listed(ctx)) == sorted(i for w, i in keyed if w >= _odoo_minus(at[0], 60))


async def test_odoo_since_over_an_old_checkpoint_keeps_its_watermark(nursery: trio.Nursery) -> None:
    sim = OdooSimulator(records=60, seed=7, credentials=ODOO_CREDS)
    keyed = _odoo_keyed(sim)
    connector = OdooConnector(_odoo_settings("http://x"))
    stream = connector.stream("partners")
    watermark = _odoo_minus(keyed[-1][0], -3600)  # ahead of every record: the cursor must not go back
    since = datetime.strptime(keyed[20][0], ODOO_TIME).replace(tzinfo=UTC)
    state = connector.since_state(stream, {"phase": "done", "since": watermark, "reconciled_at": "2000-01-01 00:00:00"},
                                  since)
    ctx = await _odoo_sync(nursery, sim, state, SyncMode.INCREMENTAL)
    assert sorted(_odoo_listed(ctx)) == sorted(i for w, i in keyed if w >= keyed[20][0])
    assert ctx.pages[-1].checkpoint == {"reconciled_at": "2000-01-01 00:00:00", "cursor": watermark}


# --- the engine's soft-delete rule ---------------------------------------------------------------


def test_an_item_that_is_no_object_beside_a_tombstoned_record_does_not_crash_the_page() -> None:
    """A rule that does not keep soft-deleted records filtered them with `.get` on every item: an
    item that is no object (a failed item, recorded by the engine) crashed the whole page."""
    from freshd.connectors.listing import soft_deleted
    from freshd.connectors.paginators import NoPaging
    from freshd.connectors.streams import Listing, SoftDelete

    page = [{"id": 1, "deleted": None}, "garbage", {"id": 2, "deleted": "2024-01-01 00:00:00"}, {"id": 3}]
    dropped = Listing(NoPaging(), soft_delete=SoftDelete("deleted", keep=False))
    assert soft_deleted(dropped, "id", page) == ([page[0], "garbage", page[3]], ["2"])
    kept = Listing(NoPaging(), soft_delete=SoftDelete("deleted"))
    assert soft_deleted(kept, "id", page) == (page, ["2"])
    assert soft_deleted(Listing(NoPaging()), "id", page) == (page, [])
