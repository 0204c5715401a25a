"""Powens: the simulator speaks the protocol (plain httpx), and the connector end to end."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import trio

from freshd.connectors.base import ConnectionSettings, check_settings
from freshd.connectors.powens.connector import PowensConnector, classify
from freshd.connectors.powens.simulator import PowensSimulator
from freshd.connectors.simulator import serve_asgi
from freshd.errors import ConfigError, PermanentError, RateLimited, ReauthRequired, TransientError
from freshd.store.jobs import JobKind, JobStatus
from tests.rig import CollectPages, Rig, open_rig

CREDS = {"access_token": "powens-test-token"}


def settings(url: str) -> ConnectionSettings:
    return ConnectionSettings("bank", "powens", f"{url}/2.0", credentials=CREDS, options={"page_size": 50})


async def run(rig: Rig, kind: JobKind = JobKind.INITIAL) -> Any:
    with trio.fail_after(30):
        return await rig.sync(kind)


@pytest.fixture
async def served(nursery: trio.Nursery) -> AsyncIterator[tuple[PowensSimulator, str]]:
    sim = PowensSimulator(records=30, seed=3, credentials=CREDS)
    port = await nursery.start(functools.partial(serve_asgi, sim.app, "127.0.0.1", 0))
    yield sim, f"http://127.0.0.1:{port}/2.0"


async def test_the_simulator_checks_token_limit_and_filters(served: tuple[PowensSimulator, str]) -> None:
    sim, base = served
    auth = {"Authorization": "Bearer powens-test-token"}
    async with httpx.AsyncClient(base_url=base) as client:
        refused = await client.get("/users/me/transactions", params={"limit": 10})
        assert refused.status_code == 401 and refused.json()["code"] == "invalidToken"
        missing = await client.get("/users/me/transactions", headers=auth)
        assert missing.status_code == 400 and missing.json()["code"] == "missingParameter"
        too_many = await client.get("/users/me/transactions", params={"limit": 1001}, headers=auth)
        assert too_many.status_code == 400 and too_many.json()["code"] == "invalidValue"
        changed = sim.mutate("transactions")
        body = (await client.get("/users/me/transactions", params={"limit": 1000}, headers=auth)).json()
        assert str(changed["deleted"]) not in {str(t["id"]) for t in body["transactions"]}  # hidden without `all`
        body = (await client.get("/users/42/transactions", params={"limit": 1000, "all": ""}, headers=auth)).json()
        deleted = [t for t in body["transactions"] if str(t["id"]) == changed["deleted"]]
        assert deleted and deleted[0]["deleted"] is not None
        assert body["total"] == len(sim.transactions)
        body = (await client.get("/users/me/connections", headers=auth)).json()
        assert [c["state"] for c in body["connections"]] == [None, None, None]


# BankAccount's and BankAccountsList's `required` lists (powens-sdks lib/specs/bank-accounts.yml)
ACCOUNT_REQUIRED = {"id", "id_connection", "id_user", "id_source", "name", "original_name", "type", "id_type",
                    "usage", "display", "bookmarked"}


async def test_accounts_carry_every_field_the_spec_requires_and_the_list_its_balances(
        served: tuple[PowensSimulator, str]) -> None:
    sim, base = served
    auth = {"Authorization": "Bearer powens-test-token"}
    disabled = sorted(sim.accounts)[0]
    sim.accounts[disabled]["disabled"] = "2026-01-01 00:00:00"
    async with httpx.AsyncClient(base_url=base, headers=auth) as client:
        listed = (await client.get("/users/me/accounts")).json()
        everything = (await client.get("/users/me/accounts", params={"all": ""})).json()
    assert set(listed) == {"accounts", "balances"} and set(everything) == {"accounts", "balances"}
    for account in everything["accounts"]:
        assert set(account) >= ACCOUNT_REQUIRED, ACCOUNT_REQUIRED - set(account)
        assert isinstance(account["id_source"], int) and isinstance(account["id_type"], int)
    counted = [a for a in sim.accounts.values() if a["disabled"] is None]
    assert listed["balances"] == {"EUR": round(sum(a["balance"] for a in counted), 2)}
    assert everything["balances"] == listed["balances"]  # a disabled account is listed with `all`, not totalled
    assert disabled in {a["id"] for a in everything["accounts"]} - {a["id"] for a in listed["accounts"]}


def test_errors_map_to_the_taxonomy() -> None:
    def answer(status: int, code: str, **headers: str) -> httpx.Response:
        return httpx.Response(status, headers=headers, json={"code": code, "description": "d", "message": "m"})

    assert isinstance(classify(answer(401, "invalidToken")), ReauthRequired)
    assert isinstance(classify(answer(400, "wrongpass")), ReauthRequired)
    assert isinstance(classify(answer(400, "SCARequired")), ReauthRequired)
    assert isinstance(classify(answer(400, "websiteUnavailable")), TransientError)
    assert isinstance(classify(answer(400, "bug")), TransientError)
    assert isinstance(classify(answer(409, "conflict")), TransientError)
    assert isinstance(classify(answer(503, "maintenance")), TransientError)
    assert isinstance(classify(answer(400, "invalidValue")), PermanentError)
    assert isinstance(classify(answer(400, "someCodeAddedLater")), PermanentError)  # unknown: by status
    assert isinstance(classify(answer(500, "someCodeAddedLater")), TransientError)
    limited = classify(answer(429, "tooManyRequests", **{"Retry-After": "3"}))
    assert isinstance(limited, RateLimited) and limited.retry_after == 3
    assert classify(httpx.Response(200, json={"transactions": []})) is None


async def test_one_bank_connection_needing_the_customer_is_recorded_and_the_rest_syncs(database_url: str) -> None:
    sim = PowensSimulator(records=40, seed=4, credentials=CREDS)
    sim.set_connection_state(2, "SCARequired", "Please renew your consent")
    sim.set_connection_state(3, "websiteUnavailable")  # Powens retries it: not a failure
    async with open_rig(database_url, sim, settings) as rig:
        outcome, runner = await run(rig)
        assert outcome.status is JobStatus.PARTIAL, outcome.error
        assert not outcome.reauth_required
        reasons = [reason for _, _, reason in rig.failed_items(runner.job.id)]
        assert len(reasons) == 1 and "bank connection 2: SCARequired" in reasons[0]
        assert "Please renew your consent" in reasons[0]
        assert rig.live("transactions") == sim.count("transactions")
        stored = rig.record("connections", "2")
        assert stored is not None and stored[0]["state"] == "SCARequired"


async def test_every_bank_connection_needing_the_customer_is_reauth_required(database_url: str) -> None:
    sim = PowensSimulator(records=10, seed=5, credentials=CREDS, connections=2)
    sim.set_connection_state(1, "wrongpass", "Identifiant ou mot de passe incorrect")
    sim.set_connection_state(2, "SCARequired")
    async with open_rig(database_url, sim, settings) as rig:
        outcome, _ = await run(rig)
    assert outcome.status is JobStatus.FAILED and outcome.reauth_required
    assert "wrongpass" in (outcome.error or "") and "Identifiant ou mot de passe incorrect" in (outcome.error or "")


async def test_a_revoked_token_is_reauth_required_without_retries(database_url: str) -> None:
    sim = PowensSimulator(records=10, seed=6, credentials=CREDS)
    async with open_rig(database_url, sim, settings) as rig:
        outcome, _ = await run(rig)
        assert outcome.status is JobStatus.COMPLETED, outcome.error
        sim.revoke_tokens()
        sim.app.requests.clear()
        outcome, _ = await run(rig, JobKind.INCREMENTAL)
    assert outcome.status is JobStatus.FAILED and outcome.reauth_required
    assert "set-credential bank access_token=" in (outcome.error or "")
    assert len(sim.app.requests) == 1  # refused once, not retried


async def test_incremental_reads_from_last_update_and_tombstones_deleted_rows(database_url: str) -> None:
    now = [datetime.now(UTC) - timedelta(hours=1)]  # the data is an hour old; the changes half that
    sim = PowensSimulator(records=120, seed=7, credentials=CREDS, clock=lambda: now[0])
    now[0] += timedelta(minutes=10)
    sim.update_transaction(1, comment="the newest change before the first sync")
    async with open_rig(database_url, sim, settings) as rig:
        outcome, _ = await run(rig)
        assert outcome.status is JobStatus.COMPLETED, outcome.error
        now[0] += timedelta(minutes=30)
        changed = sim.mutate("transactions")
        sim.app.requests.clear()
        outcome, runner = await run(rig, JobKind.INCREMENTAL)
        assert outcome.status is JobStatus.COMPLETED, outcome.error
        asked = [q for path, q in sim.app.requests if path.endswith("/transactions")]
        assert asked and all("last_update" in q and "all" in q and q["limit"] == "50" for q in asked)
        # only what changed since the watermark (minus the lookback) is read, not the 120
        assert runner.progress.entities["transactions"].processed <= 4
        gone = rig.record("transactions", str(changed["deleted"]))
        assert gone is not None and gone[1] is not None
        assert rig.live("transactions") == sim.count("transactions")


async def test_an_incremental_that_tombstones_a_listed_deletion_counts_it_as_gone_through_not_short_of_its_total(
    database_url: str,
) -> None:
    # the demo showed `transactions 2009/2015` for a completed job: the listed deletions were in
    # Powens' count but not in the progress, so a finished entity looked short of its total
    now = [datetime.now(UTC) - timedelta(hours=1)]
    sim = PowensSimulator(records=120, seed=7, credentials=CREDS, clock=lambda: now[0])
    async with open_rig(database_url, sim, settings) as rig:
        outcome, _ = await run(rig)
        assert outcome.status is JobStatus.COMPLETED, outcome.error
        now[0] += timedelta(minutes=30)
        sim.mutate("transactions")
        outcome, runner = await run(rig, JobKind.INCREMENTAL)
        assert outcome.status is JobStatus.COMPLETED, outcome.error
        transactions = runner.progress.entities["transactions"]
        assert transactions.deleted == 1
        for name, p in runner.progress.entities.items():
            assert p.processed + p.failed + p.skipped == p.total, (name, p)


def test_settings_are_checked() -> None:
    def check(credentials: dict[str, str], **options: Any) -> str:
        with pytest.raises(ConfigError) as caught:
            # the shared check: the declared required_credentials, then the connector's own
            check_settings(ConnectionSettings("bank", "powens", "http://x/2.0", credentials=credentials,
                                              options=options))
        return str(caught.value)

    assert "access_token" in check({})
    assert "page_size" in check(CREDS, page_size=5000)
    assert "lookback" in check(CREDS, lookback="soon")



async def test_retry_fetches_by_id_and_tombstones_deleted_and_missing(served: tuple[PowensSimulator, str]) -> None:
    sim, base = served
    sim.delete_transaction(2)
    connector = PowensConnector(ConnectionSettings("bank", "powens", base, credentials=CREDS))
    ctx = CollectPages()
    await connector.fetch_items(connector.stream("transactions"), ["1", "2", "999"], ctx)
    await connector.aclose()
    (page,) = ctx.pages
    assert [r["id"] for r in page.records] == [1] and list(page.deleted) == ["2", "999"]
