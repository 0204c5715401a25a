"""Generic REST: configuration checks, every paginator and auth kind against the generic simulator,
incremental cursors, resume and reconciliation, and parity with the WooCommerce connector."""

from __future__ import annotations

import functools
import re
import tomllib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from freshd.config import load_config
from freshd.connectors.base import ConnectionSettings, Page, SyncMode, check_settings
from freshd.connectors.cursors import format_cursor
from freshd.connectors.pagination import LoopGuard
from freshd.connectors.paginators import LinkHeaderPager, LinkHeaderPaging, PageRead, links
from freshd.connectors.rest.connector import RestConnector
from freshd.connectors.rest.simulator import GenericRestSimulator
from freshd.connectors.simulator import serve_asgi
from freshd.connectors.woocommerce.simulator import WooCommerceSimulator
from freshd.errors import ConfigError, PermanentError, ReauthRequired
from freshd.policies.gate import ConnectionPolicies
from freshd.progress import ControlRequest, JobControl, JobOutcome
from freshd.store import Store, connections, jobs, open_store
from freshd.store.jobs import JobKind, JobStatus
from freshd.sync import JobRunner
from tests.helpers import query

DOC = Path(__file__).resolve().parent.parent / "docs" / "connectors" / "rest.md"
TOKEN = {"token": "tok_demo"}
OAUTH = {"client_id": "client_demo", "client_secret": "csecret_demo", "refresh_token": "rt_demo"}
INCREMENTAL = {"cursor_field": "updated_at", "incremental_param": "updated_since", "lookback": 1}

# one stream definition per paging style of the simulator (resource contacts)
PAGING: dict[str, dict[str, Any]] = {
    "page_number": {"path": "api/v1/page/contacts", "records_path": "data",
                    "paginator": {"kind": "page_number", "size": 40, "total_pages_header": "X-Total-Pages",
                                  "total_header": "X-Total-Count"}},
    "page_number_short_page": {"path": "api/v1/page/contacts", "records_path": "data",
                               "paginator": {"kind": "page_number", "size": 40}},
    "page_number_body_totals": {"path": "api/v1/page/contacts", "records_path": "data",
                                "paginator": {"kind": "page_number", "size": 40, "size_param": "per_page",
                                              "total_pages_path": "meta.total_pages", "total_path": "meta.total"}},
    "offset": {"path": "api/v1/offset/contacts",
               "paginator": {"kind": "offset", "limit": 40, "total_header": "X-Total-Count"}},
    "offset_short_page": {"path": "api/v1/offset/contacts", "paginator": {"kind": "offset", "limit": 40}},
    "cursor_body": {"path": "api/v1/cursor/contacts", "records_path": "results",
                    "paginator": {"kind": "cursor", "next_path": "paging.next_cursor", "size_param": "limit",
                                  "size": 40}},
    "cursor_header": {"path": "api/v1/cursor_header/contacts", "records_path": "items",
                      "paginator": {"kind": "cursor", "cursor_param": "after", "next_header": "X-Next-Cursor",
                                    "size_param": "limit", "size": 40}},
    "link_header": {"path": "api/v1/link/contacts",
                    "paginator": {"kind": "link_header", "size_param": "per_page", "size": 40}},
    "none": {"path": "api/v1/none/contacts", "records_path": "data.items", "paginator": "none"},
}


def settings(url: str, streams: list[dict[str, Any]], *, auth: Any = "bearer",
             credentials: dict[str, str] | None = None, name: str = "generic", **options: Any) -> ConnectionSettings:
    return ConnectionSettings(name, "rest", url, credentials=TOKEN if credentials is None else credentials,
                              options={"auth": auth, "streams": streams, **options})


def contacts(kind: str = "page_number", **extra: Any) -> dict[str, Any]:
    return {"name": "contacts", **PAGING[kind], **extra}


class Collect:
    """A SyncContext that keeps the pages (connector-level tests, no database)."""

    def __init__(self, on_page: Callable[[Page], None] | None = None) -> None:
        self.pages: list[Page] = []
        self.totals: dict[str, int | None] = {}
        self.on_page = on_page

    async def emit(self, page: Page) -> None:
        self.pages.append(page)
        if self.on_page is not None:
            self.on_page(page)

    async def known_versions(self, entity: str, field: str) -> dict[str, str]:
        return {}

    def set_total(self, entity: str, total: int | None, *, estimated: bool = False) -> None:
        self.totals[entity] = total

    def ids(self) -> list[str]:
        return [str(r["id"]) for p in self.pages for r in p.records]


async def run_stream(connector: RestConnector, name: str, state: dict[str, Any] | None = None,
                     mode: SyncMode = SyncMode.FULL, ctx: Collect | None = None) -> Collect:
    ctx = ctx or Collect()
    with trio.fail_after(20):
        await connector.sync_entity(connector.stream(name), state, mode, ctx)
    return ctx


@pytest.fixture
async def generic(nursery: trio.Nursery) -> AsyncIterator[tuple[GenericRestSimulator, str]]:
    sim = GenericRestSimulator(records=130, seed=5)
    port = await nursery.start(functools.partial(serve_asgi, sim.app, "127.0.0.1", 0))
    yield sim, f"http://127.0.0.1:{port}"


# --- configuration -----------------------------------------------------------------------------


def test_unknown_paginator_kind_names_the_option_and_lists_the_valid_kinds() -> None:
    for bad in ("pages", {"kind": "pages", "size": 10}):
        streams = [contacts(), {"name": "deals", "path": "api/v1/page/deals", "paginator": bad}]
        with pytest.raises(ConfigError) as caught:
            check_settings(settings("https://api.example.com", streams))
        assert caught.value.where == "options.streams[1].paginator"
        assert "unknown paginator kind 'pages'; valid kinds: cursor, link_header, none, offset, page_number" \
            in str(caught.value)
        with pytest.raises(ConfigError, match="valid kinds"):  # the constructor checks too
            RestConnector(settings("https://api.example.com", streams))


@pytest.mark.parametrize(("options", "credentials", "where", "fragment"), [
    ({"auth": "oauth3"}, TOKEN, "options.auth",
     "unknown auth kind 'oauth3'; valid kinds: api_key, basic, bearer, none, oauth2_refresh"),
    ({"streams": [contacts(record_path="data")]}, TOKEN, "options.streams[0].record_path",
     "unknown key 'record_path'; valid keys: cursor_ascending, cursor_field"),
    ({"page_size": 5}, TOKEN, "options.page_size", "unknown key 'page_size'"),
    ({"streams": [contacts(paginator={"kind": "offset", "limits": 5})]}, TOKEN,
     "options.streams[0].paginator.limits", "valid keys: limit, limit_param, offset_param, total_header"),
    ({"streams": [contacts(paginator={"size": 5})]}, TOKEN, "options.streams[0].paginator", "missing 'kind'"),
    ({"streams": [{"name": "contacts", "path": "x"}]}, TOKEN, "options.streams[0].paginator",
     "missing required key 'paginator'"),
    ({"streams": [contacts(paginator={"kind": "page_number", "size": "100"})]}, TOKEN,
     "options.streams[0].paginator.size", "expected an integer, got a string"),
    ({"streams": [contacts(paginator={"kind": "cursor"})]}, TOKEN, "options.streams[0].paginator",
     "exactly one of 'next_path'"),
    ({"streams": [contacts(incremental_param="updated_since")]}, TOKEN,
     "options.streams[0].incremental_param", "needs 'cursor_field'"),
    ({"streams": [contacts(**INCREMENTAL, incremental_format="rfc2822")]}, TOKEN,
     "options.streams[0].incremental_format", "valid: raw, iso8601, epoch, epoch_ms or a strftime pattern"),
    ({"streams": [contacts(), contacts()]}, TOKEN, "options.streams[1].name", "duplicate stream name"),
    ({"streams": [contacts(path="https://elsewhere.example.com/contacts")]}, TOKEN,
     "options.streams[0].path", "relative to base_url"),
    ({"streams": []}, TOKEN, "options.streams", "at least one stream"),
    ({"streams": [contacts(soft_delete={"field": "archived"})]}, TOKEN,
     "options.streams[0].soft_delete.values", "missing required key"),
    ({"auth": {"kind": "api_key"}}, {"api_key": "k"}, "options.auth", "exactly one of 'header'"),
    ({"auth": {"kind": "oauth2_refresh"}}, OAUTH, "options.auth.token_url", "missing required key"),
    ({"auth": {"kind": "oauth2_refresh", "token_url": "/t", "client_auth": "jwt"}}, OAUTH,
     "options.auth.client_auth", "valid: basic, body"),
    ({}, {}, "credentials.token", "bearer auth needs credential(s): token"),
    ({"auth": "oauth2_refresh"}, OAUTH, "options.auth.token_url", "missing required key"),
    ({"auth": "basic"}, {"username": "u"}, "credentials.password", "basic auth needs credential(s): password"),
    ({"rate_limit": "fast"}, TOKEN, "options.rate_limit", "bad rate"),
    ({"streams": "[not json"}, TOKEN, "options.streams", "not valid JSON"),
])
def test_bad_options_are_refused_with_where_and_why(
    options: dict[str, Any], credentials: dict[str, str], where: str, fragment: str,
) -> None:
    built = settings("https://api.example.com", [contacts()], credentials=credentials)
    built = ConnectionSettings(built.name, "rest", built.base_url, credentials=credentials,
                               options={**built.options, **options})
    with pytest.raises(ConfigError) as caught:
        check_settings(built)
    assert caught.value.where == where, str(caught.value)
    assert fragment in str(caught.value)
    assert "tok_demo" not in str(caught.value)


def test_framework_options_and_freshctl_json_text_are_accepted() -> None:
    streams = '[{"name": "contacts", "path": "api/v1/offset/contacts", "paginator": "offset"}]'
    built = settings("https://api.example.com", [], rate_limit="5/s", rate_limits={"contacts": "1/s"},
                     entities=["contacts"], rate_group="acme", headers={"X-Tenant": "42"})
    check_settings(ConnectionSettings("g", "rest", built.base_url, credentials=TOKEN,
                                      options={**built.options, "streams": streams, "auth": "bearer"}))
    check_settings(settings("https://api.example.com", [contacts()], auth="basic",
                            credentials={"username": "key", "password": ""}))  # an empty password is legal


def test_config_file_names_the_line_of_a_bad_paginator(tmp_path: Path) -> None:
    path = tmp_path / "freshd.toml"
    path.write_text(
        '[[connections]]\nname = "crm"\nprovider = "rest"\nbase_url = "https://api.example.com"\n'
        'credentials = { token = "t" }\n'
        '[connections.options]\nauth = "bearer"\n'
        '[[connections.options.streams]]\nname = "a"\npath = "a"\npaginator = "offset"\n'
        '[[connections.options.streams]]\nname = "b"\npath = "b"\npaginator = "pages"\n'
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})
    message = str(caught.value)
    assert "connections[0].options.streams[1].paginator" in message and "valid kinds" in message
    assert ":15" in message  # the line of `paginator = "pages"`


async def test_connections_add_refuses_a_bad_paginator_and_stores_nothing(
    nursery: trio.Nursery, tmp_path: Path, database_url: str, generic: tuple[GenericRestSimulator, str],
) -> None:
    from tests.test_daemon import start_daemon

    sim, url = generic
    with trio.fail_after(30):
        running = await start_daemon(nursery, tmp_path, database_url, "")
        bad = '[{"name": "contacts", "path": "api/v1/page/contacts", "paginator": "pages"}]'
        result = await running.ctl("connections", "add", "crm", "--provider", "rest", "--base-url", url,
                                   "--credential", "token=tok_demo", "--option", "auth=bearer",
                                   "--option", f"streams={bad}", check=False)
        assert result.returncode != 0
        assert "options.streams[0].paginator" in result.stderr and "valid kinds: cursor" in result.stderr
        assert (await running.ctl_json("connections", "list"))["connections"] == []
        assert query(database_url, "SELECT count(*) FROM connections")[0][0] == 0
        assert query(database_url, "SELECT count(*) FROM sync_jobs")[0][0] == 0
        assert sim.app.stats.total() == 0  # nothing was asked of the provider either
        good = '[{"name": "contacts", "path": "api/v1/page/contacts", "records_path": "data",' \
               ' "paginator": {"kind": "page_number", "total_pages_header": "X-Total-Pages"}}]'
        added = await running.ctl_json("connections", "add", "crm", "--provider", "rest", "--base-url", url,
                                       "--credential", "token=tok_demo", "--option", "auth=bearer",
                                       "--option", f"streams={good}")
        job = await running.wait_job(added["job_id"])
    assert job["status"] == "completed", job
    assert query(database_url, "SELECT count(*) FROM records WHERE entity = 'contacts'")[0][0] == 130


# --- paginators and auth kinds against the generic simulator -----------------------------------


@pytest.mark.parametrize("kind", list(PAGING))
async def test_each_paginator_kind_reads_the_whole_listing(
    kind: str, generic: tuple[GenericRestSimulator, str],
) -> None:
    sim, url = generic
    connector = RestConnector(settings(url, [contacts(kind)]))
    try:
        ctx = await run_stream(connector, "contacts")
    finally:
        await connector.aclose()
    assert sorted(ctx.ids(), key=int) == [str(i) for i in sorted(sim.docs["contacts"])]
    assert len(ctx.ids()) == len(set(ctx.ids())) == 130
    expected_pages = 1 if kind == "none" else 4  # 130 records, 40 a page
    if kind.endswith("short_page"):
        assert len(ctx.pages) == expected_pages  # the short 4th page ends it: no extra request
    assert sim.app.stats[f"/{PAGING[kind]['path']}"] == expected_pages
    assert all(p.full_listing for p in ctx.pages)
    assert [p.listing_complete for p in ctx.pages] == [False] * (expected_pages - 1) + [True]
    if "total_header" in str(PAGING[kind]) or "total_path" in str(PAGING[kind]):
        assert ctx.totals == {"contacts": 130}


@pytest.mark.parametrize("kind", [k for k in PAGING if k != "none"])
async def test_each_paginator_kind_detects_a_pagination_loop(
    kind: str, generic: tuple[GenericRestSimulator, str],
) -> None:
    sim, url = generic
    sim.app.faults.configure({"loop": True})
    connector = RestConnector(settings(url, [contacts(kind)]))
    try:
        with pytest.raises(PermanentError, match="pagination loop"):
            await run_stream(connector, "contacts")
    finally:
        await connector.aclose()
    assert sim.app.stats[f"/{PAGING[kind]['path']}"] == 2  # the first page, and its repeat


@pytest.mark.parametrize(("sim_auth", "auth", "credentials"), [
    ("none", "none", {}),
    ("bearer", "bearer", TOKEN),
    ("basic", "basic", {"username": "demo", "password": "demo-secret"}),
    ("api_key_header", {"kind": "api_key", "header": "X-API-Key"}, {"api_key": "key_demo"}),
    ("api_key_query", {"kind": "api_key", "param": "api_key"}, {"api_key": "key_demo"}),
    ("oauth2", {"kind": "oauth2_refresh", "token_url": "/oauth/token"}, OAUTH),
    ("oauth2", {"kind": "oauth2_refresh", "token_url": "/oauth/token", "client_auth": "basic"}, OAUTH),
])
async def test_each_auth_kind_is_accepted_and_wrong_credentials_are_reauth(
    sim_auth: str, auth: Any, credentials: dict[str, str], nursery: trio.Nursery,
) -> None:
    sim = GenericRestSimulator(records=60, seed=2, auth=sim_auth)
    port = await nursery.start(functools.partial(serve_asgi, sim.app, "127.0.0.1", 0))
    url = f"http://127.0.0.1:{port}"
    # link paging: the api key must reach the followed links too (the simulator never echoes it)
    connector = RestConnector(settings(url, [contacts("link_header")], auth=auth, credentials=credentials))
    try:
        ctx = await run_stream(connector, "contacts")
    finally:
        await connector.aclose()
    assert len(ctx.ids()) == 60
    assert sim.token_requests == (1 if sim_auth == "oauth2" else 0)
    if sim_auth == "none":
        return
    wrong = {k: v + "-wrong" for k, v in credentials.items()}
    connector = RestConnector(settings(url, [contacts("link_header")], auth=auth, credentials=wrong))
    try:
        with pytest.raises(ReauthRequired):
            await run_stream(connector, "contacts")
    finally:
        await connector.aclose()


async def test_oauth2_revoked_grant_is_reauth_required_without_retrying(
    generic: tuple[GenericRestSimulator, str],
) -> None:
    sim, url = generic
    sim.revoke_tokens()
    connector = RestConnector(settings(url, [contacts()], auth={"kind": "oauth2_refresh",
                                                                "token_url": f"{url}/oauth/token"},
                                       credentials=OAUTH))
    try:
        with pytest.raises(ReauthRequired, match="invalid_grant"):
            await run_stream(connector, "contacts")
        with pytest.raises(ReauthRequired):  # sticky: the provider is not asked again
            await run_stream(connector, "contacts")
    finally:
        await connector.aclose()
    assert sim.app.stats["/oauth/token"] == 1
    assert sim.app.stats["/api/v1/page/contacts"] == 0


async def test_token_sweep_refreshes_oauth2_only(generic: tuple[GenericRestSimulator, str]) -> None:
    sim, url = generic
    static = RestConnector(settings(url, [contacts()]))
    oauth = RestConnector(settings(url, [contacts()], auth={"kind": "oauth2_refresh", "token_url": "/oauth/token"},
                                   credentials=OAUTH))
    try:
        with trio.fail_after(10):
            assert await static.ensure_token() is False  # static credentials: nothing to refresh, no request
            assert await oauth.ensure_token() is True
            assert await oauth.ensure_token() is False  # fresh for an hour
    finally:
        await static.aclose()
        await oauth.aclose()
    assert sim.token_requests == 1 and sim.app.stats.total() == 1


async def test_oauth2_rotated_refresh_token_is_used_for_the_next_refresh(nursery: trio.Nursery) -> None:
    sim = GenericRestSimulator(records=30, seed=4, auth="oauth2", rotate_refresh_tokens=True)
    port = await nursery.start(functools.partial(serve_asgi, sim.app, "127.0.0.1", 0))
    url = f"http://127.0.0.1:{port}"
    built = settings(url, [contacts()], auth={"kind": "oauth2_refresh", "token_url": "oauth/token"},
                     credentials=OAUTH)
    policies = ConnectionPolicies.standalone("rest", {}, built.options)  # one connection, two syncs
    for _ in range(2):
        connector = RestConnector(built, policies=policies)
        try:
            assert len((await run_stream(connector, "contacts")).ids()) == 30
        finally:
            await connector.aclose()
        sim.expire_tokens()  # the next sync gets a 401 and refreshes with the rotated token
    assert sim.token_requests == 2
    assert "rt_demo" not in sim.refresh_tokens  # the configured one was single-use


# --- incremental, resume, deletions --------------------------------------------------------------


@dataclass
class Db:
    store: Store
    database_url: str

    async def add(self, built: ConnectionSettings) -> int:
        row, _ = await self.store.call(
            connections.upsert_connection, self.store.keyring, name=built.name, tenant=built.tenant,
            provider=built.provider, base_url=built.base_url, options=dict(built.options),
            credentials=dict(built.credentials), source="admin")
        return row.id

    async def sync(self, connection_id: int, connector: Any, kind: JobKind, *, control: JobControl | None = None,
                   batch: int = 2000) -> tuple[JobOutcome, JobRunner]:
        job, _ = await self.store.call(jobs.create_job, connection_id, kind, "test")
        try:
            with trio.fail_after(30):
                runner = JobRunner(self.store, connector, connection_id, job, control or JobControl(),
                                   max_batch_records=batch)
                return await runner.run(), runner
        finally:
            await connector.aclose()

    def rows(self, connection_id: int) -> list[tuple[Any, ...]]:
        return query(self.database_url, "SELECT entity, external_id, payload, deleted_at IS NOT NULL FROM records"
                     " WHERE connection_id = %s ORDER BY entity, external_id", connection_id)

    def live(self, connection_id: int, entity: str) -> int:
        return int(query(self.database_url, "SELECT count(*) FROM records WHERE connection_id = %s AND entity = %s"
                         " AND deleted_at IS NULL", connection_id, entity)[0][0])

    def deleted(self, connection_id: int, entity: str, external_id: str) -> bool | None:
        rows = query(self.database_url, "SELECT deleted_at IS NOT NULL FROM records WHERE connection_id = %s"
                     " AND entity = %s AND external_id = %s", connection_id, entity, external_id)
        return bool(rows[0][0]) if rows else None

    def cursor(self, connection_id: int, entity: str) -> Any:
        return query(self.database_url, "SELECT state FROM cursors WHERE connection_id = %s AND entity = %s",
                     connection_id, entity)[0][0]


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Db]:
    async with open_store(database_url) as store:
        yield Db(store, database_url)


async def test_incremental_sends_the_cursor_and_stores_changes_and_soft_deletes(
    generic: tuple[GenericRestSimulator, str], db: Db,
) -> None:
    sim, url = generic
    built = settings(url, [contacts(**INCREMENTAL, soft_delete={"field": "archived", "values": [True]}),
                           {"name": "deals", **PAGING["cursor_body"], "path": "api/v1/cursor/deals",
                            "cursor_field": "updated_at", "incremental_param": "updated_since",
                            "incremental_format": "epoch"}])
    cid = await db.add(built)
    outcome, _ = await db.sync(cid, RestConnector(built), JobKind.INITIAL)
    assert outcome.status is JobStatus.COMPLETED, outcome.error
    newest = max(r["updated_at"] for r in sim.docs["contacts"].values())
    assert db.cursor(cid, "contacts") == {"cursor": newest}

    since = format_cursor(newest, "raw", 1)
    reread = sum(1 for r in sim.docs["contacts"].values() if r["updated_at"] > since)  # the lookback's
    sim.update("contacts", 3, first_name="Zelda")
    sim.archive("contacts", 4)
    created = sim.create("contacts")
    sim.update("deals", 7, stage="won")
    sim.app.requests.clear()
    outcome, runner = await db.sync(cid, RestConnector(built), JobKind.INCREMENTAL)
    assert outcome.status is JobStatus.COMPLETED, outcome.error
    asked = {path: params for path, params in sim.app.requests}
    assert asked["/api/v1/page/contacts"]["updated_since"] == since
    assert re.fullmatch(r"\d{10}", asked["/api/v1/cursor/deals"]["updated_since"])  # epoch seconds
    assert runner.progress.entities["contacts"].processed == 3 + reread + 1  # only what changed (+1 tombstoned)
    assert runner.progress.entities["deals"].processed == 1
    assert query(db.database_url, "SELECT payload->>'first_name' FROM records WHERE connection_id = %s"
                 " AND entity = 'contacts' AND external_id = '3'", cid) == [("Zelda",)]
    assert db.deleted(cid, "contacts", "4") is True  # archived: a soft delete
    assert db.deleted(cid, "contacts", str(created["id"])) is False
    assert db.live(cid, "contacts") == 130
    assert db.cursor(cid, "contacts") == {"cursor": created["updated_at"]}


def test_format_cursor_variants() -> None:
    assert format_cursor("2024-05-01T10:00:00", "raw", 0) == "2024-05-01T10:00:00"
    assert format_cursor("2024-05-01T10:00:00", "raw", 2) == "2024-05-01T09:59:58"
    assert format_cursor("2024-05-01T10:00:00Z", "raw", 1) == "2024-05-01T09:59:59Z"
    assert format_cursor("2024-05-01T12:00:00.250+02:00", "raw", 1) == "2024-05-01T11:59:59.250000+02:00"
    assert format_cursor("2024-05-01 10:00:00", "raw", 60) == "2024-05-01 09:59:00"
    assert format_cursor("2024-05-01T12:00:00+02:00", "iso8601", 0) == "2024-05-01T10:00:00Z"
    assert format_cursor("1970-01-01T00:01:40Z", "epoch", 0) == "100"
    assert format_cursor(100, "epoch_ms", 1) == "99000"
    assert format_cursor(1_700_000_000_000, "raw", 5000) == "1699999995000"  # numbers: their own units
    assert format_cursor("2024-05-01T10:00:00Z", "%Y%m%d%H%M", 0) == "202405011000"
    assert format_cursor("1714557600", "raw", 1) == "1714557599"  # epoch as text
    with pytest.raises(PermanentError, match="not a date"):
        format_cursor("v17", "iso8601", 0)


async def test_interrupted_full_listing_resumes_and_only_a_complete_one_reconciles(
    generic: tuple[GenericRestSimulator, str], db: Db,
) -> None:
    sim, url = generic
    # lockstep (page_concurrency 1): the cancel lands right after the first committed page
    built = settings(url, [contacts(**INCREMENTAL)], page_concurrency=1)
    cid = await db.add(built)
    control = JobControl()
    control.set(ControlRequest.CANCEL)  # takes effect after the first committed page
    outcome, _ = await db.sync(cid, RestConnector(built), JobKind.INITIAL, control=control, batch=40)
    assert outcome.status is JobStatus.CANCELLED
    assert db.live(cid, "contacts") == 40
    state = db.cursor(cid, "contacts")
    # records arrive by id, not by updated_at: the cursor must not move before the listing completes
    assert state["cursor"] is None and state["listing"]["pager"] == {"page": 2}

    # a record freshd holds that the provider no longer lists
    await db.store.call(lambda conn: conn.execute(
        "INSERT INTO records (connection_id, entity, external_id, payload, content_hash)"
        " VALUES (%s, 'contacts', '9999', '{\"id\": 9999}', '\\x00')", (cid,)))
    outcome, runner = await db.sync(cid, RestConnector(built), JobKind.INCREMENTAL)
    assert outcome.status is JobStatus.COMPLETED, outcome.error
    assert runner.progress.entities["contacts"].processed == 90  # pages 2-4 only
    assert db.deleted(cid, "contacts", "9999") is False  # a resumed listing is partial: it deletes nothing
    assert db.live(cid, "contacts") == 131
    assert db.cursor(cid, "contacts") == {"cursor": max(r["updated_at"] for r in sim.docs["contacts"].values())}

    outcome, _ = await db.sync(cid, RestConnector(built), JobKind.FULL)
    assert outcome.status is JobStatus.COMPLETED
    assert db.deleted(cid, "contacts", "9999") is True  # a complete full listing reconciles
    assert db.live(cid, "contacts") == 130


async def test_ascending_listing_advances_the_cursor_page_by_page(
    generic: tuple[GenericRestSimulator, str], db: Db,
) -> None:
    sim, url = generic
    built = settings(url, [contacts(**INCREMENTAL, cursor_ascending=True, params={"sort": "updated_at"})],
                     page_concurrency=1)
    cid = await db.add(built)
    control = JobControl()
    control.set(ControlRequest.CANCEL)
    await db.sync(cid, RestConnector(built), JobKind.INITIAL, control=control, batch=40)
    first_page = sorted(r["updated_at"] for r in sim.docs["contacts"].values())[:40]
    assert db.cursor(cid, "contacts")["cursor"] == first_page[-1]
    # the next incremental sync starts from there (a new filter: a new listing, no resume)
    sim.app.requests.clear()
    outcome, runner = await db.sync(cid, RestConnector(built), JobKind.INCREMENTAL)
    assert outcome.status is JobStatus.COMPLETED
    since = format_cursor(first_page[-1], "raw", 1)
    assert sim.app.requests[0][1]["updated_since"] == since
    # only records past the watermark are read again (90, plus what the 1 s lookback re-reads)
    assert runner.progress.entities["contacts"].processed == \
        sum(1 for r in sim.docs["contacts"].values() if r["updated_at"] > since)
    assert db.live(cid, "contacts") == 130


async def test_a_refused_resume_position_starts_the_listing_over(generic: tuple[GenericRestSimulator, str]) -> None:
    sim, url = generic
    stream = contacts("cursor_body")
    connector = RestConnector(settings(url, [stream]))
    try:
        first = await run_stream(connector, "contacts")
        stale = {"cursor": None, "listing": {**first.pages[0].checkpoint["listing"],  # type: ignore[index]
                                             "pager": {"cursor": "expired-token"}}}
        ctx = await run_stream(connector, "contacts", stale)
    finally:
        await connector.aclose()
    assert len(ctx.ids()) == 130  # the whole listing, read afresh...
    assert ctx.pages[-1].listing_complete  # ... in this run, so it may reconcile
    assert sim.app.stats["/api/v1/cursor/contacts"] == 4 + 1 + 4  # first run, the refusal, the rerun


async def test_probe_is_one_request_and_reports_rejected_credentials(
    generic: tuple[GenericRestSimulator, str],
) -> None:
    sim, url = generic
    for credentials, error in ((TOKEN, None), ({"token": "wrong"}, ReauthRequired)):
        connector = RestConnector(settings(url, [contacts()], credentials=credentials))
        try:
            with trio.fail_after(10):
                if error is None:
                    await connector.probe()
                else:
                    with pytest.raises(error):
                        await connector.probe()
        finally:
            await connector.aclose()
    assert sim.app.stats["/api/v1/page/contacts"] == 2


async def test_a_listing_that_shifts_keeps_the_cursor_and_deletes_nothing(
    generic: tuple[GenericRestSimulator, str],
) -> None:
    sim, url = generic
    # a record of page 1 is deleted after page 1 was read: page 2 starts one later, one record is skipped
    connector = RestConnector(settings(url, [contacts(**INCREMENTAL)]))
    deleted: list[int] = []

    def delete_once(page: Page) -> None:
        if not deleted:
            deleted.append(sorted(sim.docs["contacts"])[0])
            sim.delete("contacts", deleted[0])

    try:
        ctx = await run_stream(connector, "contacts", {"cursor": "2000-01-01T00:00:00Z"}, SyncMode.FULL,
                               Collect(delete_once))
        last = ctx.pages[-1]
        assert len(ctx.ids()) == 129  # one record skipped by the shift...
        assert not last.listing_complete  # ... so no reconciliation
        assert last.checkpoint == {"cursor": "2000-01-01T00:00:00Z"}  # and the cursor stays

        # an id that comes back on a later page (it moved to the end of an updated_at listing)
        sorted_by_time = contacts(**INCREMENTAL, params={"sort": "updated_at"})
        connector2 = RestConnector(settings(url, [sorted_by_time]))
        first_id = int(sim.by_updated["contacts"][0][1])
        moved: list[int] = []

        def touch_once(page: Page) -> None:
            if not moved:
                moved.append(first_id)
                sim.update("contacts", first_id, first_name="Moved")

        ctx = await run_stream(connector2, "contacts", None, SyncMode.FULL, Collect(touch_once))
        await connector2.aclose()
        assert ctx.ids().count(str(first_id)) == 2
        assert not ctx.pages[-1].listing_complete and ctx.pages[-1].checkpoint == {"cursor": None}
    finally:
        await connector.aclose()


async def test_streams_without_a_server_filter_reconcile_at_every_sync(
    generic: tuple[GenericRestSimulator, str], db: Db,
) -> None:
    sim, url = generic
    built = settings(url, [contacts("offset"), {"name": "empty", **PAGING["offset"],
                                                "params": {"updated_since": "2999-01-01T00:00:00Z"}}])
    cid = await db.add(built)
    await db.sync(cid, RestConnector(built), JobKind.INITIAL)
    assert db.live(cid, "contacts") == 130
    await db.store.call(lambda conn: conn.execute(
        "INSERT INTO records (connection_id, entity, external_id, payload, content_hash)"
        " VALUES (%s, 'empty', 'kept', '{}', '\\x00')", (cid,)))
    sim.delete("contacts", 9)
    outcome, _ = await db.sync(cid, RestConnector(built), JobKind.INCREMENTAL)
    assert outcome.status is JobStatus.COMPLETED
    assert db.deleted(cid, "contacts", "9") is True
    assert db.deleted(cid, "empty", "kept") is False  # an empty listing deletes nothing


async def test_missing_records_path_fails_the_stream_instead_of_emptying_it(
    generic: tuple[GenericRestSimulator, str], db: Db,
) -> None:
    _, url = generic
    built = settings(url, [contacts(records_path="rows"), {"name": "deals", **PAGING["offset"],
                                                           "path": "api/v1/offset/deals"}])
    cid = await db.add(built)
    outcome, _ = await db.sync(cid, RestConnector(built), JobKind.INITIAL)
    assert outcome.status is JobStatus.PARTIAL
    assert "records_path 'rows' is not in the response" in (outcome.error or "")
    assert db.live(cid, "deals") == 130 and db.live(cid, "contacts") == 0


async def test_fetch_items_by_id_marks_missing_ones_deleted(generic: tuple[GenericRestSimulator, str]) -> None:
    sim, url = generic
    connector = RestConnector(settings(url, [contacts(item_path="api/v1/records/contacts/{id}")]))
    sim.delete("contacts", 12)
    ctx = Collect()
    try:
        with trio.fail_after(10):
            await connector.fetch_items(connector.stream("contacts"), ["11", "12"], ctx)
    finally:
        await connector.aclose()
    assert [r["id"] for r in ctx.pages[0].records] == [11]
    assert list(ctx.pages[0].deleted) == ["12"]


def test_link_header_parsing_and_the_same_origin_rule() -> None:
    header = ('<https://api.example.com/items?page=2&x=a,b>; rel="next", '
              '<https://api.example.com/items?page=9>; rel="last"; title="end", </items?page=1>; rel=first')
    assert links(header) == [("https://api.example.com/items?page=2&x=a,b", {"next"}),
                             ("https://api.example.com/items?page=9", {"last"}), ("/items?page=1", {"first"})]
    pager = LinkHeaderPager(LinkHeaderPaging(), LoopGuard("t"), httpx.URL("https://api.example.com/"))

    def page(link: str) -> PageRead:
        return PageRead([{"id": 1}], ["1"], [], httpx.Headers({"link": link}), httpx.URL("https://api.example.com/items"))

    pager.advance(page("</items?page=2>; rel=\"next\""))
    assert pager.ask().url == "https://api.example.com/items?page=2" and not pager.done
    with pytest.raises(PermanentError, match="another origin"):
        pager.advance(page('<https://evil.example.net/items?page=3>; rel="next"'))


# --- the simulator speaks plain HTTP -----------------------------------------------------------


async def test_generic_simulator_protocol_with_a_plain_client(generic: tuple[GenericRestSimulator, str]) -> None:
    sim, url = generic
    auth = {"Authorization": "Bearer tok_demo"}
    async with httpx.AsyncClient(base_url=url, headers=auth) as client:
        r = await client.get("/api/v1/page/deals", params={"page": 2, "per_page": 50})
        assert r.headers["x-total-count"] == "130" and r.headers["x-total-pages"] == "3"
        assert [d["id"] for d in r.json()["data"]] == list(range(51, 101))
        assert r.json()["meta"] == {"page": 2, "per_page": 50, "total": 130, "total_pages": 3}
        assert len(r.content) / 50 > 900  # realistic record sizes (~1 KB)
        r = await client.get("/api/v1/link/deals", params={"per_page": 100})
        assert 'rel="next"' in r.headers["link"] and "page=2" in r.headers["link"]
        r = await client.get("/api/v1/cursor/deals", params={"limit": 100})
        token = r.json()["paging"]["next_cursor"]
        r = await client.get("/api/v1/cursor/deals", params={"limit": 100, "cursor": token})
        assert len(r.json()["results"]) == 30 and r.json()["paging"]["next_cursor"] is None
        r = await client.get("/api/v1/cursor/deals", params={"cursor": "garbage!"})
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_cursor"
        r = await client.get("/api/v1/offset/deals", params={"limit": 101})
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_parameter"
        newest = max(d["updated_at"] for d in sim.docs["deals"].values())
        r = await client.get("/api/v1/none/deals", params={"updated_since": newest})
        assert r.json() == {"data": {"items": []}}
        r = await client.get("/api/v1/records/deals/5")
        assert r.json()["id"] == 5
        r = await client.get("/api/v1/page/deals", headers={"Authorization": "Bearer nope"})
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_token"
        r = await client.post("/oauth/token", data={"grant_type": "refresh_token", "refresh_token": "rt_demo",
                                                    "client_id": "client_demo", "client_secret": "csecret_demo"})
        access = r.json()["access_token"]
        assert r.json()["expires_in"] == 3600 and sim.token_requests == 1
        r = await client.get("/api/v1/records/deals/5", headers={"Authorization": f"Bearer {access}"})
        assert r.status_code == 200
        sim.expire_tokens()
        r = await client.get("/api/v1/records/deals/5", headers={"Authorization": f"Bearer {access}"})
        assert r.status_code == 401 and r.json()["error"]["code"] == "token_expired"
        sim.revoke_tokens()
        r = await client.post("/oauth/token", data={"grant_type": "refresh_token", "refresh_token": "rt_demo",
                                                    "client_id": "client_demo", "client_secret": "csecret_demo"})
        assert r.status_code == 400 and r.json()["error"] == "invalid_grant"


# --- parity: WooCommerce expressed as a generic REST connection ----------------------------------


def woo_as_rest(url: str) -> ConnectionSettings:
    """The documented example (docs/connectors/rest.md), pointed at the simulator."""
    text = DOC.read_text()
    block = text.split("<!-- woo-as-rest")[1].split("```toml\n")[1].split("```")[0]
    spec = tomllib.loads(block)["connections"][0]
    credentials = {"username": "ck_parity", "password": "cs_parity"}
    assert set(spec["credentials"]) == set(credentials)
    return ConnectionSettings(spec["name"], spec["provider"], url + "/wp-json/wc/v3", credentials=credentials,
                              options=spec["options"])


async def test_woocommerce_as_generic_rest_stores_the_same_records(
    nursery: trio.Nursery, db: Db,
) -> None:
    from freshd.connectors.woocommerce.connector import WooCommerceConnector

    sim = WooCommerceSimulator(records=230, seed=13,
                               credentials={"consumer_key": "ck_parity", "consumer_secret": "cs_parity"})
    port = await nursery.start(functools.partial(serve_asgi, sim.app, "127.0.0.1", 0))
    url = f"http://127.0.0.1:{port}"
    woo_settings = ConnectionSettings("shop", "woocommerce", url, credentials={
        "consumer_key": "ck_parity", "consumer_secret": "cs_parity"}, options={"diff_interval": 0})
    rest_settings = woo_as_rest(url)
    check_settings(rest_settings)
    woo, rest = await db.add(woo_settings), await db.add(rest_settings)

    async def both(kind: JobKind) -> None:
        for cid, make in ((woo, lambda: WooCommerceConnector(woo_settings)),
                          (rest, lambda: RestConnector(rest_settings))):
            outcome, _ = await db.sync(cid, make(), kind)
            assert outcome.status is JobStatus.COMPLETED, outcome.error
        assert db.rows(woo) == db.rows(rest)

    await both(JobKind.INITIAL)
    assert len(db.rows(rest)) == 230 + 230 + 23

    changed = {entity: sim.mutate(entity) for entity in ("orders", "products", "customers")}
    sim.update("orders", 17, status="completed")
    await both(JobKind.INCREMENTAL)
    for entity, ids in changed.items():
        assert db.deleted(rest, entity, str(ids["deleted"])) is True, entity  # trash, or gone (customers)
        assert db.deleted(rest, entity, str(ids["created"])) is False, entity
    assert query(db.database_url, "SELECT payload->>'status' FROM records WHERE connection_id = %s"
                 " AND entity = 'orders' AND external_id = '17'", rest) == [("completed",)]
    # the generic connector read only the changed orders, through the server-side filter
    assert any("modified_after" in params and params.get("orderby") == "id"
               for path, params in sim.app.requests if path.endswith("/orders"))

    sim.delete("products", 3, force=True)  # no tombstone: only a complete listing shows it
    await both(JobKind.FULL)
    assert db.deleted(rest, "products", "3") is True
