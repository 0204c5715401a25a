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

from freshd.connectors.base import ConnectionSettings, SyncMode
from freshd.connectors.orion.connector import OrionConnector, classify, classify_token
from freshd.connectors.orion.simulator import OrionSimulator, error_body
from freshd.connectors.simulator import Request, Response, SimulatorApp, serve_asgi
from freshd.errors import AuthExpired, ConfigError, PermanentError, RateLimited, ReauthRequired, TransientError
from freshd.policies.gate import ConnectionPolicies
from freshd.policies.tokens import Token, TokenRefresher
from freshd.store.jobs import JobKind, JobStatus
from tests.helpers import query
from tests.rig import CollectPages, Rig, open_rig

CREDS = {"username": "advisor@acme.example", "password": "pw-orion", "client_id": "4321",
         "client_secret": "0e9d8c7b-1111-2222-3333-444455556666"}
PARTNER = {"client_id": CREDS["client_id"], "client_secret": CREDS["client_secret"]}


def settings_fn(credentials: dict[str, str] | None = None, **options: Any) -> Any:
    return lambda url: ConnectionSettings("wealth", "orion", url if url.endswith("/api") else f"{url}/api",
                                          credentials=credentials or CREDS, options={"page_size": 25, **options})


async def completed(rig: Rig, kind: JobKind = JobKind.INITIAL, options: dict[str, Any] | None = None) -> Any:
    with trio.fail_after(30):
        outcome, runner = await rig.sync(kind, **(options or {}))
    assert outcome.status is JobStatus.COMPLETED, outcome.error
    return runner


@pytest.fixture
async def served(nursery: trio.Nursery) -> AsyncIterator[tuple[OrionSimulator, str]]:
    sim = OrionSimulator(records=30, seed=3, credentials=CREDS, history_days=40)
    port = await nursery.start(functools.partial(serve_asgi, sim.app, "127.0.0.1", 0))
    yield sim, f"http://127.0.0.1:{port}/api"


def query_cursor(rig: Rig, entity: str) -> dict[str, Any]:
    rows = query(rig.database_url, "SELECT state FROM cursors WHERE connection_id = %s AND entity = %s",
                 rig.connection_id, entity)
    state = rows[0][0]
    assert isinstance(state, dict)
    return state


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
    now = [datetime.now(UTC) - timedelta(days=3)]  # created well before the pull: not new to AUM
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
        updated_id = str(changed["updated"])
        updated = rig.record("accounts", updated_id)
        assert updated is not None and updated[0]["editedDate"] == sim.accounts[int(updated_id)]["editedDate"]
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
    assert "aum_full_interval" in check(CREDS, aum_full_interval=-1)


async def test_retry_fetches_by_id_and_tombstones_the_missing(served: tuple[OrionSimulator, str]) -> None:
    sim, base = served
    sim.delete_client(3)
    connector = OrionConnector(settings_fn()(base))
    ctx = CollectPages()
    await connector.fetch_items(connector.stream("clients"), ["1", "3"], ctx)
    await connector.aclose()
    (page,) = ctx.pages
    assert [r["id"] for r in page.records] == [1] and list(page.deleted) == ["3"]


def persisting_policies(saved: list[Token]) -> ConnectionPolicies:
    """Policies shared across jobs like the daemon's actor keeps them, persisting every new token."""
    async def persist(token: Token) -> None:
        saved.append(token)

    return ConnectionPolicies.standalone("orion", OrionConnector.rate_limits, {}, name="wealth",
                                         tokens=TokenRefresher(provider="orion", persist=persist))


async def test_an_expired_session_is_refreshed_once_with_the_rotated_refresh_token(database_url: str) -> None:
    sim = OrionSimulator(records=30, seed=7, credentials=CREDS, history_days=3)
    saved: list[Token] = []
    async with open_rig(database_url, sim, settings_fn(), policies=persisting_policies(saved)) as rig:
        await completed(rig)
        assert dict(sim.grants) == {"password": 1}  # one session for the whole job
        assert [t.refresh_token for t in saved] == list(sim.refresh_tokens)  # persisted before use
        sim.expire_tokens()  # the session still looks valid to the client: Orion says 401
        await completed(rig, JobKind.INCREMENTAL)
        assert dict(sim.grants) == {"password": 1, "refresh_token": 1}  # exactly one refresh
        assert len(saved) == 2 and sim.refresh_tokens == {saved[-1].refresh_token}  # the new one is kept
        assert saved[0].refresh_token != saved[1].refresh_token


async def test_revoked_access_with_shared_policies_stops_and_stays_stopped(database_url: str) -> None:
    sim = OrionSimulator(records=10, seed=8, credentials=CREDS, history_days=3)
    async with open_rig(database_url, sim, settings_fn(), policies=persisting_policies([])) as rig:
        await completed(rig)
        sim.revoke_tokens()
        sim.app.requests.clear()
        for _ in range(2):
            with trio.fail_after(30):
                outcome, _ = await rig.sync(JobKind.INCREMENTAL)
            assert outcome.status is JobStatus.FAILED and outcome.reauth_required
            assert "set-credential wealth password=" in (outcome.error or "")
    token_calls = [q for p, q in sim.app.requests if p.lower().endswith("/security/token")]
    # the refresh token, then the password, each refused once; the second job asks nothing (sticky)
    assert len(token_calls) == 2 and sim.token_requests == 1


async def test_a_client_deleted_mid_listing_shifts_no_one_into_a_false_delete(database_url: str) -> None:
    sim = OrionSimulator(records=60, seed=9, credentials=CREDS, history_days=2)
    async with open_rig(database_url, sim, settings_fn()) as rig:
        await completed(rig)

        def delete_first_during_page_two(path: str, skip: int) -> None:
            if path.endswith("/Portfolio/Clients") and skip > 0 and 1 in sim.clients:
                sim.delete_client(1)  # every later row moves up one: a plain $skip=25 would miss client 26

        sim.on_page = delete_first_during_page_two
        await completed(rig, JobKind.FULL)
        sim.on_page = None
        live = {str(c) for c in sim.clients}
        stored = {str(c) for c in range(1, 61) if (r := rig.record("clients", str(c))) and r[1] is None}
        assert live <= stored, "no client was skipped, so none is falsely deleted"
        assert "1" in stored, "a shifted listing does not reconcile deletions"
        await completed(rig, JobKind.FULL)  # a clean listing does
        record = rig.record("clients", "1")
        assert record is not None and record[1] is not None
        assert rig.live("clients") == sim.count("clients")


async def test_a_shifted_accounts_listing_keeps_its_cursor(database_url: str) -> None:
    sim = OrionSimulator(records=30, seed=10, credentials=CREDS, history_days=2)
    async with open_rig(database_url, sim, settings_fn()) as rig:
        await completed(rig)
        cursor = query_cursor(rig, "accounts")

        def delete_during_page_two(path: str, skip: int) -> None:
            if path.endswith("/Portfolio/Accounts") and skip > 0 and 2 in sim.accounts:
                del sim.accounts[2]

        sim.on_page = delete_during_page_two
        await completed(rig, JobKind.FULL)
        after = query_cursor(rig, "accounts")
        assert after["cursor"] <= cursor["cursor"] and after.get("full_at") == cursor.get("full_at")


async def test_a_new_client_gets_its_whole_aum_history(database_url: str) -> None:
    now = [datetime.now(UTC) - timedelta(days=20)]
    sim = OrionSimulator(records=12, seed=11, credentials=CREDS, history_days=30, clock=lambda: now[0])
    async with open_rig(database_url, sim, settings_fn(aum_interval=0)) as rig:
        await completed(rig)
        now[0] = datetime.now(UTC)
        sim.history_days = 60  # an onboarded household arrives with imported history
        new = sim.create_client()
        sim.app.requests.clear()
        await completed(rig, JobKind.INCREMENTAL)
        starts = {p.split("/")[-2]: q["startDate"] for p, q in sim.app.requests if p.endswith("/AumOverTime")}
        origin = (datetime.now(UTC).date() - timedelta(days=730)).isoformat()
        assert starts.pop(str(new["id"])) == origin
        assert starts and all(s > origin for s in starts.values())  # the others: the lookback only
        stored = query(rig.database_url, "SELECT count(*) FROM records WHERE connection_id = %s AND entity ="
                       " 'aum_history' AND payload ->> 'clientId' = %s", rig.connection_id, str(new["id"]))
        assert stored[0][0] == 61


async def test_a_periodic_full_aum_pull_keeps_the_origin_and_drops_gone_clients(database_url: str) -> None:
    sim = OrionSimulator(records=8, seed=12, credentials=CREDS, history_days=5)
    async with open_rig(database_url, sim, settings_fn(aum_interval=0, aum_full_interval=0,
                                                       aum_history_days=10)) as rig:
        await completed(rig)
        origin = query_cursor(rig, "aum_history")["origin"]
        sim.delete_client(3)
        sim.app.requests.clear()
        await completed(rig, JobKind.INCREMENTAL, options={"aum_history_days": 2})
        starts = {q["startDate"] for p, q in sim.app.requests if p.endswith("/AumOverTime")}
        assert starts == {origin}  # the first pull's start, whatever aum_history_days says now
        assert rig.live("aum_history") == sim.count("aum_history")  # client 3's points are tombstoned


class Clients(CollectPages):
    async def known_versions(self, entity: str, field: str) -> dict[str, str]:
        return {"1": "2020-01-01T00:00:00"} if entity == "clients" else {}


@pytest.fixture
async def odd_orion(nursery: trio.Nursery) -> AsyncIterator[str]:
    """An Orion that sends a non-object list item and an AUM point without its day."""
    app = SimulatorApp(error_body)

    async def token(request: Request) -> Response:
        return Response.json({"access_token": "t", "expires_in": 36000.0})

    async def clients(request: Request) -> Response:
        rows: list[Any] = [{"id": 1}, "junk", {"id": 3}, {"id": 4}]
        skip, top = int(request.arg("$skip") or "0"), int(request.arg("$top") or "5000")
        return Response.json(rows[skip:skip + top])

    async def aum(request: Request) -> Response:
        return Response.json([{"id": 1, "grouping": 0, "asOfDate": "2026-01-02T00:00:00", "value": 5.0},
                              {"id": 1, "grouping": 0, "value": 6.0}])

    app.route("GET", "/api/v1/Security/Token", token)
    app.route("GET", "/api/v1/Portfolio/Clients", clients)
    app.route("GET", "/api/v1/Portfolio/Clients/{id}/AumOverTime", aum)
    port = await nursery.start(functools.partial(serve_asgi, app, "127.0.0.1", 0))
    yield f"http://127.0.0.1:{port}/api"


async def test_a_non_object_item_neither_ends_the_listing_nor_shifts_it(odd_orion: str) -> None:
    connector = OrionConnector(settings_fn(page_size=3)(odd_orion))
    ctx = CollectPages()
    await connector.sync_entity(connector.stream("clients"), None, SyncMode.FULL, ctx)
    await connector.aclose()
    assert [list(p.records) for p in ctx.pages] == [[{"id": 1}, "junk", {"id": 3}], [{"id": 4}]]
    assert ctx.pages[-1].listing_complete  # the engine records "junk" as a failed item


async def test_an_aum_point_without_its_day_is_a_failed_item(odd_orion: str) -> None:
    connector = OrionConnector(settings_fn()(odd_orion))
    ctx = Clients()
    await connector.sync_entity(connector.stream("aum_history"), None, SyncMode.FULL, ctx)
    await connector.aclose()
    (page,) = ctx.pages
    assert [r["id"] for r in page.records] == ["1:2026-01-02"]
    assert [i for i, _ in page.failures] == [None] and "asOfDate" in page.failures[0][1]
