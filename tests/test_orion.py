"""Orion: the simulator speaks the protocol (plain httpx), and the connector end to end."""

from __future__ import annotations

import base64
import functools
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import trio

from freshd.connectors.base import ConnectionSettings
from freshd.connectors.orion.connector import OrionConnector, classify, classify_token
from freshd.connectors.orion.simulator import OrionSimulator
from freshd.connectors.simulator import serve_asgi
from freshd.errors import AuthExpired, ConfigError, PermanentError, RateLimited, ReauthRequired, TransientError
from freshd.store.jobs import JobKind, JobStatus
from tests.rig import CollectPages, Rig, open_rig

CREDS = {"username": "advisor@acme.example", "password": "pw-orion", "client_id": "4321",
         "client_secret": "0e9d8c7b-1111-2222-3333-444455556666"}
PARTNER = {"client_id": CREDS["client_id"], "client_secret": CREDS["client_secret"]}


def settings_fn(credentials: dict[str, str] | None = None, **options: Any) -> Any:
    return lambda url: ConnectionSettings("wealth", "orion", url if url.endswith("/api") else f"{url}/api",
                                          credentials=credentials or CREDS, options={"page_size": 25, **options})


async def completed(rig: Rig, kind: JobKind = JobKind.INITIAL) -> Any:
    with trio.fail_after(30):
        outcome, runner = await rig.sync(kind)
    assert outcome.status is JobStatus.COMPLETED, outcome.error
    return runner


@pytest.fixture
async def served(nursery: trio.Nursery) -> AsyncIterator[tuple[OrionSimulator, str]]:
    sim = OrionSimulator(records=30, seed=3, credentials=CREDS, history_days=40)
    port = await nursery.start(functools.partial(serve_asgi, sim.app, "127.0.0.1", 0))
    yield sim, f"http://127.0.0.1:{port}/api"


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


async def test_the_simulator_issues_sessions_and_single_use_refresh_tokens(
        served: tuple[OrionSimulator, str]) -> None:
    sim, base = served
    async with httpx.AsyncClient(base_url=base) as client:
        issued = sim.token_requests
        plain = (await client.get("/v1/security/token", headers={"Authorization": basic("advisor@acme.example",
                                                                                          "pw-orion")})).json()
        assert plain["expires_in"] == 36000.0 and "refresh_token" not in plain  # not a partner app
        partner = (await client.get("/v1/Security/Token", headers={
            "Authorization": basic("advisor@acme.example", "pw-orion"), **PARTNER})).json()
        first = partner["refresh_token"]
        again = await client.get("/v1/Security/Token", headers={"Authorization": f"Bearer {first}", **PARTNER})
        assert again.status_code == 200 and again.json()["refresh_token"] != first
        reused = await client.get("/v1/Security/Token", headers={"Authorization": f"Bearer {first}", **PARTNER})
        assert reused.status_code == 401  # single use
        wrong = await client.get("/v1/Security/Token", headers={"Authorization": basic("advisor@acme.example", "x")})
        assert wrong.status_code == 401 and "Message" in wrong.json()
        assert sim.token_requests == issued + 3  # refused calls issue nothing
        assert (await client.get("/v1/Portfolio/Clients")).status_code == 401
        session = {"Authorization": f"Session {plain['access_token']}"}
        odata = (await client.get("/v1/Portfolio/Clients", params={"$top": 10, "$skip": 25}, headers=session)).json()
        spec = (await client.get("/v1/portfolio/clients", params={"top": 10, "skip": 25}, headers=session)).json()
        assert [c["id"] for c in odata] == [c["id"] for c in spec] == list(range(26, 31))  # a short page: the end
        monthly = (await client.get("/v1/Portfolio/Clients/1/AumOverTime", headers=session, params={
            "startDate": "2000-01-01", "endDate": datetime.now(UTC).date().isoformat(), "interval": "M"})).json()
        daily = (await client.get("/v1/Portfolio/Clients/1/AumOverTime", headers=session,
                                  params={"interval": "D"})).json()
        assert len(daily) == 41 and 1 <= len(monthly) <= 3
        assert set(daily[0]) == {"id", "grouping", "asOfDate", "value"}


def test_errors_map_to_the_taxonomy() -> None:
    request = httpx.Request("GET", "https://api.orionadvisor.com/api/v1/Portfolio/Clients")

    def answer(status: int, **headers: str) -> httpx.Response:
        return httpx.Response(status, headers=headers, json={"Message": "no"}, request=request)

    assert isinstance(classify(answer(401)), AuthExpired)
    assert isinstance(classify_token(answer(401)), ReauthRequired)
    assert isinstance(classify(answer(403)), PermanentError)
    assert isinstance(classify(answer(500, **{"X-OAS-CorrelationId": "c0ffee"})), TransientError)
    assert "c0ffee" in str(classify(answer(500, **{"X-OAS-CorrelationId": "c0ffee"})))
    assert isinstance(classify(answer(429, **{"Retry-After": "4"})), RateLimited)
    assert classify(httpx.Response(200, json=[], request=request)) is None


async def test_each_refresh_token_is_used_once_and_a_spent_one_falls_back_to_the_password(
        served: tuple[OrionSimulator, str]) -> None:
    sim, base = served
    connector = OrionConnector(settings_fn()(base))
    first = await connector.refresh_token(None)  # Basic + partner headers
    assert first.refresh_token in sim.refresh_tokens
    second = await connector.refresh_token(first)  # Bearer <refresh>: rotated
    assert second.refresh_token != first.refresh_token
    assert sim.refresh_tokens == {second.refresh_token}  # the first is spent
    issued = sim.token_requests
    third = await connector.refresh_token(first)  # a spent token (e.g. a stale copy): the password again
    assert third.access_token and sim.token_requests == issued + 1
    await connector.aclose()
    only_refresh = {"refresh_token": "spent", **PARTNER}
    connector = OrionConnector(settings_fn(only_refresh)(base))
    with pytest.raises(ReauthRequired, match="set-credential wealth refresh_token="):
        await connector.refresh_token(None)
    await connector.aclose()


async def test_revoked_access_is_reauth_required_without_a_loop(database_url: str) -> None:
    sim = OrionSimulator(records=10, seed=2, credentials=CREDS, history_days=3)
    async with open_rig(database_url, sim, settings_fn()) as rig:
        await completed(rig)
        sim.revoke_tokens()
        sim.app.requests.clear()
        with trio.fail_after(30):
            outcome, _ = await rig.sync(JobKind.INCREMENTAL)
    assert outcome.status is JobStatus.FAILED and outcome.reauth_required
    assert "set-credential wealth password=" in (outcome.error or "")
    token_calls = [p for p, _ in sim.app.requests if p.lower().endswith("/security/token")]
    assert 1 <= len(token_calls) <= 2  # the refresh token, then the password: each refused once


async def test_incremental_accounts_by_edited_date_and_aum_from_the_lookback(database_url: str) -> None:
    now = [datetime.now(UTC) - timedelta(hours=2)]
    sim = OrionSimulator(records=60, seed=4, credentials=CREDS, history_days=40, clock=lambda: now[0])
    now[0] += timedelta(minutes=10)
    sim.update_account(1, managementStyle="Income")  # the newest edit the first sync sees
    async with open_rig(database_url, sim, settings_fn(aum_lookback_days=3, aum_interval=0)) as rig:
        await completed(rig)
        assert rig.live("aum_history") == sim.count("aum_history")
        now[0] += timedelta(hours=1)
        changed = sim.mutate("accounts")
        sim.app.requests.clear()
        runner = await completed(rig, JobKind.INCREMENTAL)
        asked = [q for p, q in sim.app.requests if p.endswith("/Portfolio/Accounts")]
        assert asked and all("editedStartDate" in q and q["$top"] == "25" for q in asked)
        # the created and the updated account (and account 1 again: inside the 5-minute lookback)
        assert 2 <= runner.progress.entities["accounts"].processed <= 3
        updated = rig.record("accounts", str(changed["updated"]))
        assert updated is not None and updated[0]["editedDate"] == sim.accounts[int(changed["updated"])]["editedDate"]
        aum = [q for p, q in sim.app.requests if p.endswith("/AumOverTime")]
        assert len(aum) == 60 and all(q["interval"] == "D" for q in aum)
        start = datetime.fromisoformat(aum[0]["startDate"]).date()
        assert (now[0].date() - start).days <= 4  # the re-pulled window, not the 40 days


async def test_aum_is_pulled_once_per_interval(database_url: str) -> None:
    sim = OrionSimulator(records=10, seed=6, credentials=CREDS, history_days=3)
    async with open_rig(database_url, sim, settings_fn()) as rig:
        await completed(rig)
        sim.app.requests.clear()
        await completed(rig, JobKind.INCREMENTAL)  # within aum_interval (6 h) of the first pull
        assert not [p for p, _ in sim.app.requests if p.endswith("/AumOverTime")]
        await completed(rig, JobKind.FULL)  # a full sync always pulls
        assert len([p for p, _ in sim.app.requests if p.endswith("/AumOverTime")]) == 10
        assert rig.live("aum_history") == sim.count("aum_history")


async def test_plain_paging_option_sends_top_and_skip(database_url: str) -> None:
    sim = OrionSimulator(records=30, seed=5, credentials=CREDS, history_days=2)
    async with open_rig(database_url, sim, settings_fn(paging="plain")) as rig:
        await completed(rig)
        assert rig.live("clients") == 30
    listed = [q for p, q in sim.app.requests if p.endswith("/Portfolio/Clients")]
    assert listed and all("top" in q and "$top" not in q for q in listed)


def test_settings_are_checked() -> None:
    def check(credentials: dict[str, str], **options: Any) -> str:
        with pytest.raises(ConfigError) as caught:
            OrionConnector.validate_settings(ConnectionSettings("w", "orion", "http://x/api",
                                                                credentials=credentials, options=options))
        return str(caught.value)

    assert "username and password" in check({"username": "u"})
    assert "go together" in check({**CREDS, "client_secret": ""})
    assert "needs the partner" in check({"refresh_token": "r"})
    assert "unknown paging" in check(CREDS, paging="cursor")
    assert "page_size" in check(CREDS, page_size=0)



async def test_retry_fetches_by_id_and_tombstones_the_missing(served: tuple[OrionSimulator, str]) -> None:
    sim, base = served
    sim.delete_client(3)
    connector = OrionConnector(settings_fn()(base))
    ctx = CollectPages()
    await connector.fetch_items(connector.stream("clients"), ["1", "3"], ctx)
    await connector.aclose()
    (page,) = ctx.pages
    assert [r["id"] for r in page.records] == [1] and list(page.deleted) == ["3"]
