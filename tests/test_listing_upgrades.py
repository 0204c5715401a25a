"""Checkpoints stored before the listing engine still resume: each provider's upgrade_checkpoint,
driven against its simulator (what the next sync asks for, and the checkpoint it ends with)."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import trio

from freshd.connectors.base import ConnectionSettings, Connector, SyncMode
from freshd.connectors.orion.connector import OrionConnector
from freshd.connectors.orion.simulator import OrionSimulator
from freshd.connectors.powens.connector import PowensConnector
from freshd.connectors.powens.simulator import PowensSimulator
from freshd.connectors.simulator import serve_asgi
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
