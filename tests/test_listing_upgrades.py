"""Checkpoints stored before the listing engine still resume: each provider's `upgrade_checkpoint`
reads its old shapes, and the next sync neither loses nor re-lists more than the old position implies.
"""

from __future__ import annotations

import functools
from datetime import UTC, datetime, timedelta
from typing import Any

import trio

from freshd.connectors.amazon_sp.connector import AmazonSPConnector, upgrade_checkpoint
from freshd.connectors.amazon_sp.simulator import AmazonSPSimulator
from freshd.connectors.base import ConnectionSettings, SyncMode
from freshd.connectors.simulator import serve_asgi
from tests.rig import CollectPages

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
