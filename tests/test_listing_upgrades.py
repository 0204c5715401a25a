"""Checkpoints stored before the listing engine still resume: each provider's `upgrade_checkpoint`.

Each section feeds a provider's old checkpoint shapes to the next sync and checks it neither loses
records nor lists more than the old position implies.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
import trio

from freshd.connectors.base import ConnectionSettings, SyncMode
from freshd.connectors.simulator import serve_asgi
from freshd.connectors.woocommerce.connector import ORDERS, WooCommerceConnector, upgrade_checkpoint
from freshd.connectors.woocommerce.simulator import WooCommerceSimulator
from tests.rig import CollectPages

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
    assert upgrade_checkpoint(ORDERS, None) == {}
    assert upgrade_checkpoint(ORDERS, {"phase": "done", "since": None}) == {}
    engine = {"cursor": "2026-01-01T00:00:00", "listing": {"v": 1, "pager": {"page": 3}}}
    assert upgrade_checkpoint(ORDERS, engine) == engine
