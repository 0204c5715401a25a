"""Amazon SP-API: the simulator speaks the protocol (plain httpx), and the connector end to end."""

from __future__ import annotations

import csv
import functools
import gzip
import io
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import trio

from freshd.connectors.amazon_sp.connector import (
    USAGE_PLANS,
    AmazonSPConnector,
    Options,
    StaleNextToken,
    classify,
    classify_lwa,
)
from freshd.connectors.amazon_sp.simulator import REPORT_COLUMNS, AmazonSPSimulator
from freshd.connectors.base import ConnectionSettings, Page, SyncMode
from freshd.connectors.simulator import serve_asgi
from freshd.errors import (
    AuthExpired,
    ConfigError,
    ConfigErrors,
    PermanentError,
    RateLimited,
    ReauthRequired,
    TransientError,
)
from freshd.policies.gate import ConnectionPolicies
from freshd.policies.ratelimit import Rate
from freshd.store.jobs import JobKind, JobStatus
from tests.helpers import query
from tests.rig import Rig, open_rig

CREDS = {"refresh_token": "Atzr|test-refresh", "client_id": "amzn1.application-oa2-client.test",
         "client_secret": "amzn1.oa2-cs.v1.test"}
US = "ATVPDKIKX0DER"
BASE_OPTIONS = {"marketplace_ids": [US], "token_url": "/auth/o2/token", "report_poll_interval": 0.05}


def settings_fn(**options: Any) -> Any:
    return lambda url: ConnectionSettings("amazon", "amazon_sp", url, credentials=CREDS,
                                          options={**BASE_OPTIONS, **options})


def policies_for(**options: Any) -> ConnectionPolicies:
    return ConnectionPolicies.standalone("amazon_sp", AmazonSPConnector.rate_limits, options, name="amazon")


@pytest.fixture
async def served(nursery: trio.Nursery) -> AsyncIterator[tuple[AmazonSPSimulator, str]]:
    simulator = AmazonSPSimulator(records=120, seed=5, credentials=CREDS, next_token_ttl=0.3, report_seconds=0.1)
    port = await nursery.start(functools.partial(serve_asgi, simulator.app, "127.0.0.1", 0))
    yield simulator, f"http://127.0.0.1:{port}"


async def lwa_token(client: httpx.AsyncClient, base: str) -> str:
    r = await client.post(f"{base}/auth/o2/token", data={"grant_type": "refresh_token", **CREDS})
    assert r.status_code == 200, r.text
    return str(r.json()["access_token"])


def iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


# --- the simulator, from a third-party client's point of view ---------------------------------------


async def test_lwa_refresh_grant_and_access_token_header(served: tuple[AmazonSPSimulator, str]) -> None:
    sim, base = served
    with trio.fail_after(10):
        async with httpx.AsyncClient() as client:
            token = await lwa_token(client, base)
            assert token.startswith("Atza|")
            as_json = await client.post(f"{base}/auth/o2/token", json={"grant_type": "refresh_token", **CREDS})
            assert as_json.status_code == 200 and as_json.json()["expires_in"] == 3600
            assert as_json.json()["refresh_token"] == CREDS["refresh_token"]
            wrong = await client.post(f"{base}/auth/o2/token",
                                      data={"grant_type": "refresh_token", **CREDS, "client_secret": "nope"})
            assert wrong.status_code == 401 and wrong.json()["error"] == "invalid_client"
            bad_grant = await client.post(f"{base}/auth/o2/token",
                                          data={"grant_type": "refresh_token", **CREDS, "refresh_token": "Atzr|x"})
            assert bad_grant.status_code == 400 and bad_grant.json()["error"] == "invalid_grant"
            params = {"granularityType": "Marketplace", "granularityId": US, "marketplaceIds": US}
            anonymous = await client.get(f"{base}/fba/inventory/v1/summaries", params=params)
            assert anonymous.status_code == 403
            assert anonymous.json()["errors"][0]["code"] == "Unauthorized"
            ok = await client.get(f"{base}/fba/inventory/v1/summaries", params=params,
                                  headers={"x-amz-access-token": token})
            assert ok.status_code == 200
            assert ok.headers["x-amzn-ratelimit-limit"] == "2" and ok.headers["x-amzn-requestid"]
            sim.expire_tokens()
            expired = await client.get(f"{base}/fba/inventory/v1/summaries", params=params,
                                       headers={"x-amz-access-token": token})
    assert expired.status_code == 403
    assert expired.json()["errors"][0]["details"] == "The access token you provided has expired."
    assert sim.token_requests == 2


async def test_inventory_pagination_token_is_top_level_and_expires(served: tuple[AmazonSPSimulator, str]) -> None:
    _, base = served
    params = {"granularityType": "Marketplace", "granularityId": US, "marketplaceIds": US, "details": "true"}
    with trio.fail_after(10):
        async with httpx.AsyncClient() as client:
            headers = {"x-amz-access-token": await lwa_token(client, base)}
            first = (await client.get(f"{base}/fba/inventory/v1/summaries", params=params, headers=headers)).json()
            token = first["pagination"]["nextToken"]
            assert "nextToken" not in first["payload"]
            page = first["payload"]["inventorySummaries"]
            assert len(page) == 50 and "inventoryDetails" in page[0]
            assert [s["sellerSku"] for s in page] == sorted(s["sellerSku"] for s in page)
            second = await client.get(f"{base}/fba/inventory/v1/summaries",
                                      params={**params, "nextToken": token}, headers=headers)
            assert second.status_code == 200
            stale_token = second.json()["pagination"]["nextToken"]
            await trio.sleep(0.4)  # this simulator's nextToken lives 0.3 s (the real one 30 s)
            stale = await client.get(f"{base}/fba/inventory/v1/summaries",
                                     params={**params, "nextToken": stale_token}, headers=headers)
            two = await client.get(f"{base}/fba/inventory/v1/summaries",
                                   params={**params, "marketplaceIds": f"{US},A2EUQ1WTGCTBG2"}, headers=headers)
    assert stale.status_code == 400
    assert stale.json() == {"errors": [{"code": "InvalidInput", "message": "Next token is invalid or expired",
                                        "details": ""}]}
    assert two.status_code == 400 and two.json()["errors"][0]["code"] == "InvalidInput"


async def test_finances_two_minute_rule_and_180_day_limit(served: tuple[AmazonSPSimulator, str]) -> None:
    _, base = served
    now = datetime.now(UTC)
    with trio.fail_after(10):
        async with httpx.AsyncClient() as client:
            headers = {"x-amz-access-token": await lwa_token(client, base)}

            async def events(after: datetime, before: datetime, **extra: Any) -> httpx.Response:
                return await client.get(f"{base}/finances/v0/financialEvents", headers=headers, params={
                    "PostedAfter": iso(after), "PostedBefore": iso(before), **extra})

            too_recent = await events(now - timedelta(days=1), now - timedelta(minutes=1))
            too_long = await events(now - timedelta(days=200), now - timedelta(minutes=3))
            window = await events(now - timedelta(days=180), now - timedelta(minutes=3), MaxResultsPerPage=10)
            token = window.json()["payload"]["NextToken"]
            more = await client.get(f"{base}/finances/v0/financialEvents", headers=headers,
                                    params={"NextToken": token})
    assert too_recent.status_code == 400 and too_recent.json()["errors"][0]["code"] == "InvalidInput"
    assert too_long.status_code == 200  # more than 180 days apart: an empty answer, not an error
    assert not any(too_long.json()["payload"]["FinancialEvents"].values())
    assert "NextToken" not in too_long.json()["payload"]
    lists = window.json()["payload"]["FinancialEvents"]
    assert sum(len(v) for v in lists.values()) == 10 and "ShipmentEventList" in lists
    assert more.status_code == 200 and sum(len(v) for v in more.json()["payload"]["FinancialEvents"].values())


async def test_report_flow_with_a_gzipped_tab_separated_document(served: tuple[AmazonSPSimulator, str]) -> None:
    sim, base = served
    with trio.fail_after(10):
        async with httpx.AsyncClient() as client:
            headers = {"x-amz-access-token": await lwa_token(client, base)}
            created = await client.post(f"{base}/reports/2021-06-30/reports", headers=headers, json={
                "reportType": "GET_FBA_REIMBURSEMENTS_DATA", "marketplaceIds": [US],
                "dataStartTime": iso(datetime.now(UTC) - timedelta(days=500))})
            assert created.status_code == 202
            report_id = created.json()["reportId"]
            statuses = []
            while True:
                report = (await client.get(f"{base}/reports/2021-06-30/reports/{report_id}", headers=headers)).json()
                statuses.append(report["processingStatus"])
                if report["processingStatus"] == "DONE":
                    break
                await trio.sleep(0.03)
            document = (await client.get(f"{base}/reports/2021-06-30/documents/{report['reportDocumentId']}",
                                         headers=headers)).json()
            assert document["compressionAlgorithm"] == "GZIP"
            download = await client.get(document["url"])  # presigned: no access token
    assert statuses[0] == "IN_QUEUE" and statuses[-1] == "DONE"
    rows = list(csv.DictReader(io.StringIO(gzip.decompress(download.content).decode()), delimiter="\t"))
    assert tuple(rows[0]) == REPORT_COLUMNS
    assert len(rows) == len(sim.reimbursement_rows)


async def test_usage_plans_are_enforced_with_quota_exceeded(served: tuple[AmazonSPSimulator, str]) -> None:
    sim, base = served
    params = {"granularityType": "Marketplace", "granularityId": US, "marketplaceIds": US}
    with trio.fail_after(10):
        async with httpx.AsyncClient() as client:
            headers = {"x-amz-access-token": await lwa_token(client, base)}
            await client.post(f"{base}/_sim/quotas", json={"enforce": True})
            answers = [await client.get(f"{base}/fba/inventory/v1/summaries", params=params, headers=headers)
                       for _ in range(3)]  # burst 2
    assert [a.status_code for a in answers] == [200, 200, 429]
    assert answers[2].json() == {"errors": [{"code": "QuotaExceeded", "details": "",
                                             "message": "You exceeded your quota for the requested resource."}]}
    assert "x-amzn-ratelimit-limit" not in answers[2].headers
    assert sim.quotas.throttled == 1


# --- error classification -----------------------------------------------------------------------------


def response(status: int, body: Any, url: str = "https://sellingpartnerapi-na.amazon.com/fba/inventory/v1/summaries",
             method: str = "GET") -> httpx.Response:
    return httpx.Response(status, json=body, request=httpx.Request(method, url))


def errors(code: str, message: str, details: str = "") -> dict[str, Any]:
    return {"errors": [{"code": code, "message": message, "details": details}]}


def test_classify_maps_sp_api_and_lwa_errors() -> None:
    expired = classify(response(403, errors("Unauthorized", "Access to requested resource is denied.",
                                            "The access token you provided has expired.")))
    assert isinstance(expired, AuthExpired)
    no_role = classify(response(403, errors("Unauthorized", "Access to requested resource is denied.")))
    assert type(no_role) is PermanentError
    assert type(classify(response(400, errors("InvalidInput", "Invalid Input")))) is PermanentError
    stale = classify(response(400, errors("InvalidInput", "Next token is invalid or expired"),
                              url="https://x/fba/inventory/v1/summaries?nextToken=abc"))
    assert isinstance(stale, StaleNextToken) and isinstance(stale, PermanentError)
    quota = classify(response(429, errors("QuotaExceeded", "You exceeded your quota for the requested resource."),
                              url="https://x/finances/v0/financialEvents?PostedAfter=2024-01-01T00:00:00Z"))
    assert isinstance(quota, RateLimited) and quota.retry_after == pytest.approx(2.0)
    report_quota = classify(response(429, errors("QuotaExceeded", "quota"),
                                     url="https://x/reports/2021-06-30/reports", method="POST"))
    assert isinstance(report_quota, RateLimited) and report_quota.retry_after == pytest.approx(1 / 0.0167)
    assert isinstance(classify(response(503, errors("ServiceUnavailable", "later"))), TransientError)
    assert isinstance(classify_lwa(response(400, {"error": "invalid_grant", "error_description": "revoked"})),
                      ReauthRequired)
    assert isinstance(classify_lwa(response(500, {"error": "server_error"})), TransientError)
    assert type(classify_lwa(response(400, {"error": "invalid_scope"}))) is PermanentError


def test_settings_are_checked_and_regions_give_the_host() -> None:
    def parse(base_url: str = "", **options: Any) -> Options:
        return Options.parse(ConnectionSettings("a", "amazon_sp", base_url, credentials=CREDS, options=options))

    assert parse(region="eu", marketplace_ids="A1PA6795UKMFR9").base_url == "https://sellingpartnerapi-eu.amazon.com"
    assert parse(region="fe", marketplace_ids=["A1VC38T7YXB528"]).token_url == "https://api.amazon.com/auth/o2/token"
    with pytest.raises(ConfigError, match=r"options\.marketplace_ids"):
        parse("https://sellingpartnerapi-na.amazon.com")
    with pytest.raises(ConfigError, match=r"options\.region"):
        parse("https://sellingpartnerapi-na.amazon.com", region="eu", marketplace_ids=[US])
    with pytest.raises(ConfigError, match="reimbursement_sources"):
        parse(region="na", marketplace_ids=[US], reimbursement_sources=["emails"])
    with pytest.raises(ConfigError, match="client_secret"):
        Options.parse(ConnectionSettings("a", "amazon_sp", "", credentials={"refresh_token": "r", "client_id": "c"},
                                         options={"region": "na", "marketplace_ids": [US]}))
    assert AmazonSPConnector.rate_limits["getInventorySummaries"] == Rate(2.0, 2)
    assert AmazonSPConnector.rate_limits["listFinancialEvents"] == Rate(0.5, 30)
    assert AmazonSPConnector.rate_limits["createReport"] == Rate(0.0167, 15)
    assert AmazonSPConnector.rate_limits["getReport"] == Rate(2.0, 15)
    assert AmazonSPConnector.rate_limits["getReportDocument"] == Rate(0.0167, 15)


def test_options_are_checked_by_the_schema_engine_every_problem_at_once() -> None:
    settings = ConnectionSettings("a", "amazon_sp", "", credentials=CREDS, options={
        "region": "xx", "marketplace_ids": " , ", "history_days": -1, "start_date": "someday",
        "reimbursement_sources": ["emails"], "page_concurrency": 2})
    with pytest.raises(ConfigErrors) as caught:
        AmazonSPConnector.validate_settings(settings)
    assert [e.where for e in caught.value.errors] == [
        f"connection a: options.{key}" for key in ("region", "marketplace_ids", "history_days", "start_date",
                                                   "reimbursement_sources")]
    assert "valid: na, eu, fe" in str(caught.value) and "ISO 8601" in str(caught.value)
    with pytest.raises(ConfigError, match=r"options\.marketplace: unknown key 'marketplace'; valid keys: .*_ids"):
        AmazonSPConnector.validate_settings(replace(settings, options={"region": "eu", "marketplace": [US]}))
    with pytest.raises(ConfigError, match=r"options\.report_timeout: expected a number, got a string"):
        AmazonSPConnector.validate_settings(replace(settings, options={"region": "eu", "marketplace_ids": [US],
                                                                      "report_timeout": "1h"}))
    options = AmazonSPConnector.read_options(replace(settings, base_url="http://127.0.0.1:9/", options={
        "marketplace_ids": (US, " A1PA6795UKMFR9"), "token_url": "/auth/o2/token", "start_date": "2024-05-06"}))
    assert options.base_url == "http://127.0.0.1:9" and options.token_url == "http://127.0.0.1:9/auth/o2/token"
    assert options.marketplaces == (US, "A1PA6795UKMFR9")
    assert options.since(None, SyncMode.INCREMENTAL) == options.start == datetime(2024, 5, 6, tzinfo=UTC)
    assert options.since("2024-06-03T00:00:00Z", SyncMode.INCREMENTAL) == datetime(2024, 6, 1, tzinfo=UTC)
    assert options.since("2024-06-03T00:00:00Z", SyncMode.FULL) == options.start


# --- the connector end to end ---------------------------------------------------------------------------


async def initial(rig: Rig, kind: JobKind = JobKind.INITIAL, **options: Any) -> Any:
    with trio.fail_after(30):
        outcome, runner = await rig.sync(kind, **options)
    assert outcome.status is JobStatus.COMPLETED, outcome.error
    return runner


def stored(rig: Rig, entity: str) -> list[dict[str, Any]]:
    rows = query(rig.database_url, "SELECT payload FROM records WHERE connection_id = %s AND entity = %s"
                 " AND deleted_at IS NULL", rig.connection_id, entity)
    return [row[0] for row in rows]  # type: ignore[misc]


async def test_token_is_refreshed_once_and_again_after_expiry(database_url: str) -> None:
    sim = AmazonSPSimulator(records=60, seed=2, credentials=CREDS)
    async with open_rig(database_url, sim, settings_fn(), policies=policies_for()) as rig:
        await initial(rig)
        assert sim.token_requests == 1  # one token for the whole job
        content_type, form = sim.last_token_request or ("", {})
        assert content_type.startswith("application/x-www-form-urlencoded")
        assert form == {"grant_type": "refresh_token", **CREDS}
        token = rig.policies.tokens.token if rig.policies else None
        assert token is not None and token.expires_at is not None
        assert 3500 < token.expires_at - datetime.now(UTC).timestamp() <= 3600
        sim.expire_tokens()  # the cached token is still "valid" for the client: the API says otherwise
        await initial(rig, JobKind.INCREMENTAL)
        assert sim.token_requests == 2


async def test_revoked_authorization_stops_as_reauth_required(database_url: str) -> None:
    sim = AmazonSPSimulator(records=20, seed=2, credentials=CREDS)
    async with open_rig(database_url, sim, settings_fn(), policies=policies_for()) as rig:
        await initial(rig)
        sim.revoke_tokens()
        with trio.fail_after(30):
            outcome, _ = await rig.sync(JobKind.INCREMENTAL)
    assert outcome.status is JobStatus.FAILED and outcome.reauth_required
    assert "invalid_grant" in (outcome.error or "")
    assert sim.token_requests == 1  # the refused grant is asked once, not in a loop


class SlowContext:
    """A sync context whose writer stalls once, past the nextToken's lifetime."""

    def __init__(self, stall: float, on_stall: Any = None) -> None:
        self.pages: list[Page] = []
        self.stall = stall
        self.on_stall = on_stall

    async def emit(self, page: Page) -> None:
        self.pages.append(page)
        if self.stall:
            await trio.sleep(self.stall)
            self.stall = 0
            if self.on_stall is not None:
                self.on_stall()

    async def known_versions(self, entity: str, field: str) -> dict[str, str]:
        return {}

    def set_total(self, entity: str, total: int | None, *, estimated: bool = False) -> None:
        pass


async def test_expired_next_token_restarts_the_listing_without_duplicates(nursery: trio.Nursery) -> None:
    # 120 SKUs: 3 pages.  The token lives 1 s here (30 s for real); the first page's writer takes 1.2 s.
    sim = AmazonSPSimulator(records=120, seed=4, credentials=CREDS, next_token_ttl=1.0)
    port = await nursery.start(functools.partial(serve_asgi, sim.app, "127.0.0.1", 0))
    connector = AmazonSPConnector(settings_fn()(f"http://127.0.0.1:{port}"))
    ctx = SlowContext(stall=1.2)
    with trio.fail_after(20):
        await connector.sync_entity(connector.stream("inventory_summaries"), None, SyncMode.FULL, ctx)
    await connector.aclose()
    ids = [r["id"] for p in ctx.pages for r in p.records]
    assert len(ids) == len(set(ids)) == 120  # everything once: the restart re-emitted nothing
    assert sim.app.stats["/fba/inventory/v1/summaries"] == 5  # 1, 2 (stale), then 1, 2, 3
    assert ctx.pages[-1].listing_complete and "run" not in ctx.pages[-1].checkpoint  # type: ignore[operator]
    assert not any(p.listing_complete for p in ctx.pages[:-1])


async def test_expired_finance_next_token_restarts_the_window_without_duplicates(nursery: trio.Nursery) -> None:
    sim = AmazonSPSimulator(records=5, seed=4, credentials=CREDS, history_days=60, events=250, reimbursements=0)
    port = await nursery.start(functools.partial(serve_asgi, sim.app, "127.0.0.1", 0))
    start_date = iso(datetime.now(UTC) - timedelta(days=90))
    connector = AmazonSPConnector(settings_fn(start_date=start_date)(f"http://127.0.0.1:{port}"))
    ctx = SlowContext(stall=0.01, on_stall=sim.expire_next_tokens)  # as if the writer took 25 minutes
    with trio.fail_after(20):
        await connector.sync_entity(connector.stream("financial_events"), None, SyncMode.FULL, ctx)
    await connector.aclose()
    ids = [r["id"] for p in ctx.pages for r in p.records]
    assert len(ids) == len(set(ids)) == sim.count("financial_events") == 250
    assert sim.app.stats["/finances/v0/financialEvents"] == 5  # 1, 2 (stale), then 1, 2, 3
    assert ctx.pages[-1].checkpoint is not None and ctx.pages[-1].checkpoint["phase"] == "done"


async def test_inventory_incremental_by_start_date_time_and_deletes_by_full_listing(database_url: str) -> None:
    sim = AmazonSPSimulator(records=60, seed=6, credentials=CREDS)
    async with open_rig(database_url, sim, settings_fn(reimbursement_sources=[])) as rig:
        await initial(rig)
        changed = sim.mutate("inventory_summaries")
        sim.app.requests.clear()
        runner = await initial(rig, JobKind.INCREMENTAL)
        asked = [q for path, q in sim.app.requests if path == "/fba/inventory/v1/summaries"]
        assert asked and all("startDateTime" in q for q in asked)
        assert runner.progress.entities["inventory_summaries"].processed == 2  # the new SKU and the changed one
        assert rig.record("inventory_summaries", str(changed["created"])) is not None
        deleted = rig.record("inventory_summaries", str(changed["deleted"]))
        assert deleted is not None and deleted[1] is None  # startDateTime cannot show a deletion ...
        await initial(rig, JobKind.INCREMENTAL, inventory_full_interval=0)  # ... the periodic full listing does
        deleted = rig.record("inventory_summaries", str(changed["deleted"]))
        assert deleted is not None and deleted[1] is not None
        assert rig.live("inventory_summaries") == sim.count("inventory_summaries")
        record = stored(rig, "inventory_summaries")[0]
        assert record["marketplaceId"] == US and record["id"] == f"{US}:{record['sellerSku']}"
        assert "fulfillableQuantity" in record["inventoryDetails"]


async def test_finances_respect_the_two_minute_rule_and_180_day_windows(database_url: str) -> None:
    sim = AmazonSPSimulator(records=10, seed=8, credentials=CREDS, history_days=500, events=150, reimbursements=4)
    start = datetime.now(UTC) - timedelta(days=500)
    options = {"start_date": iso(start), "reimbursement_sources": ["financial_events"]}
    async with open_rig(database_url, sim, settings_fn(**options)) as rig:
        before_sync = datetime.now(UTC)
        await initial(rig)
        asked = [q for path, q in sim.app.requests if path == "/finances/v0/financialEvents"]
        windows = sorted({(q["PostedAfter"], q["PostedBefore"]) for q in asked})
        for after, before in windows:
            span = datetime.fromisoformat(before) - datetime.fromisoformat(after)
            assert span <= timedelta(days=180)
            assert datetime.fromisoformat(before) <= before_sync - timedelta(minutes=2)
        # two passes read the events (the stream, and reimbursements from the events): each ends its
        # last window at its own "now - 3 min", so those ends may differ by a second
        starts = sorted({after for after, _ in windows})
        assert len(starts) == 3  # 500 days of history
        assert starts[0] == iso(start)
        assert all(before in starts for after, before in windows if after != starts[-1])  # contiguous
        assert rig.live("financial_events") == sim.count("financial_events") == 150 + sum(
            1 for r in sim.reimbursement_rows if r["quantity-reimbursed-cash"] != "0")
        types = {r["eventType"] for r in stored(rig, "financial_events")}
        assert {"ShipmentEvent", "AdjustmentEvent", "ServiceFeeEvent"} <= types

        # incremental: from the watermark minus the 48 h lookback; re-read events keep their ids
        new = sim.add_event()
        sim.app.requests.clear()
        runner = await initial(rig, JobKind.INCREMENTAL)
        asked = [q for path, q in sim.app.requests if path == "/finances/v0/financialEvents"]
        first_after = datetime.fromisoformat(asked[0]["PostedAfter"])
        assert before_sync - timedelta(hours=48, minutes=5) < first_after < before_sync - timedelta(hours=47)
        assert rig.live("financial_events") == sim.count("financial_events")
        assert runner.progress.entities["financial_events"].processed >= 1
        assert any(r.get("AmazonOrderId") == new.get("AmazonOrderId") for r in stored(rig, "financial_events"))


async def test_reimbursements_from_the_gzipped_report_and_the_finance_events(database_url: str) -> None:
    sim = AmazonSPSimulator(records=20, seed=9, credentials=CREDS, reimbursements=12)
    async with open_rig(database_url, sim, settings_fn()) as rig:
        await initial(rig)
        records = stored(rig, "reimbursements")
        from_report = {r["id"]: r for r in records if r["source"] == "report"}
        from_events = [r for r in records if r["source"] == "financial_events"]
        assert len(from_report) == len(sim.reimbursement_rows) == 12
        row = sim.reimbursement_rows[0]
        mine = from_report[f"report:{row['reimbursement-id']}:{row['sku']}"]
        assert all(mine[column] == row[column] for column in REPORT_COLUMNS)
        cash = [r for r in sim.reimbursement_rows if r["quantity-reimbursed-cash"] != "0"]
        assert sorted(r["TransactionNumber"] for r in from_events) == sorted(r["reimbursement-id"] for r in cash)
        assert all(r["AdjustmentType"] == "FBAInventoryReimbursement" for r in from_events)
        assert rig.live("reimbursements") == sim.count("reimbursements")
        created = [q for path, q in sim.app.requests if path == "/reports/2021-06-30/reports"]
        assert len(created) == 1

        # within report_interval an incremental sync asks for no new report
        await initial(rig, JobKind.INCREMENTAL)
        assert len([q for path, q in sim.app.requests if path == "/reports/2021-06-30/reports"]) == 1

        # a report that ends CANCELLED has no data: the job completes; FATAL fails the entity
        def report_state() -> dict[str, Any]:
            rows = query(rig.database_url, "SELECT state FROM cursors WHERE connection_id = %s"
                         " AND entity = 'reimbursements'", rig.connection_id)
            return rows[0][0]["report"]  # type: ignore[index,no-any-return]

        read_until = report_state()["end"]
        sim.fail_next_report = "CANCELLED"  # no data, or too soon: the range stays for the next report
        await initial(rig, JobKind.INCREMENTAL, report_interval=0)
        assert report_state()["end"] == read_until and "pending" not in report_state()
        sim.fail_next_report = "FATAL"
        with trio.fail_after(30):
            outcome, _ = await rig.sync(JobKind.INCREMENTAL, report_interval=0)
        assert outcome.status is JobStatus.PARTIAL and "FATAL" in (outcome.error or "")
        assert rig.live("reimbursements") == sim.count("reimbursements")


class RecordingGate:
    """The connection's gate, noting which operation (`limit=`) each request named."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.limits: list[str | None] = []

    async def before_request(self, limit: str | None = None) -> None:
        self.limits.append(limit)
        await self.inner.before_request(limit)

    def after_request(self, response: Any, error: Any, limit: str | None = None) -> None:
        self.inner.after_request(response, error, limit)


async def test_every_request_names_its_operation_and_keeps_within_the_plans(database_url: str) -> None:
    sim = AmazonSPSimulator(records=60, seed=3, credentials=CREDS, events=60, reimbursements=5, enforce_quotas=True)
    policies = policies_for()
    gate = RecordingGate(policies.gate)
    policies.gate = gate  # type: ignore[assignment]
    async with open_rig(database_url, sim, settings_fn(), policies=policies) as rig:
        await initial(rig)
    assert None not in gate.limits
    assert set(gate.limits) == {"token", "getInventorySummaries", "listFinancialEvents", "createReport",
                                "getReport", "getReportDocument", "reportDocumentDownload"}
    assert sim.quotas.throttled == 0  # the client-side buckets kept every operation within its plan
    assert gate.inner.buckets["listFinancialEvents"].rate == USAGE_PLANS["listFinancialEvents"]


async def test_quota_exceeded_is_waited_out(database_url: str) -> None:
    sim = AmazonSPSimulator(records=60, seed=3, credentials=CREDS, events=20, reimbursements=3, enforce_quotas=True,
                            history_days=90)
    one_window = iso(datetime.now(UTC) - timedelta(days=100))  # each finance request now costs 2 s
    async with open_rig(database_url, sim, settings_fn(reimbursement_sources=[], start_date=one_window)) as rig:
        # another worker of the same application just spent both operations' bursts
        sim.quotas.drain("getInventorySummaries")
        sim.quotas.drain("listFinancialEvents")
        with trio.fail_after(30):
            outcome, _ = await rig.sync(JobKind.INITIAL)
        assert outcome.status is JobStatus.COMPLETED, outcome.error
        assert sim.quotas.throttled >= 2
        assert rig.live("inventory_summaries") == 60
        assert rig.live("financial_events") == sim.count("financial_events")


async def test_fetch_items_by_sku_tombstones_the_gone_ones(nursery: trio.Nursery) -> None:
    sim = AmazonSPSimulator(records=10, seed=1, credentials=CREDS)
    port = await nursery.start(functools.partial(serve_asgi, sim.app, "127.0.0.1", 0))
    connector = AmazonSPConnector(settings_fn()(f"http://127.0.0.1:{port}"))
    skus = sorted(sim.inventory[US])
    sim.delete_sku(US, skus[1])
    ctx = SlowContext(stall=0)
    with trio.fail_after(10):
        await connector.fetch_items(connector.stream("inventory_summaries"), [f"{US}:{skus[0]}", f"{US}:{skus[1]}"],
                                    ctx)
    await connector.aclose()
    assert [r["id"] for r in ctx.pages[0].records] == [f"{US}:{skus[0]}"]
    assert list(ctx.pages[0].deleted) == [f"{US}:{skus[1]}"]
