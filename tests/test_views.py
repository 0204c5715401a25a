"""Typed views of the synced data (freshd.store.views, docs/DATA.md), read as an app would."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest
import trio

from freshd.connectors.base import Column, columns
from freshd.connectors.rest.connector import RestConnector
from freshd.connectors.woocommerce.connector import WooCommerceConnector
from freshd.connectors.woocommerce.simulator import WooCommerceSimulator
from freshd.errors import ConfigError
from freshd.store import connections, open_store
from freshd.store.jobs import JobKind
from freshd.store.views import builtin_views, ensure_views, markdown
from tests.cases_woocommerce import CASE
from tests.helpers import query
from tests.rig import open_rig

DATA_MD = Path(__file__).parent.parent / "docs" / "DATA.md"


def execute(url: str, statement: str, *params: object) -> None:
    with psycopg.connect(url, options="-c search_path=freshd,public") as conn:
        conn.execute(statement, params)


def view_oids(url: str) -> dict[str, int]:
    """Every freshd view's oid: a view dropped and created again gets a new one."""
    return {f"{schema}.{name}": int(str(oid)) for schema, name, oid in query(
        url, "SELECT n.nspname, c.relname, c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
             " WHERE c.relkind = 'v' AND n.nspname LIKE 'freshd\\_%%'")}


async def test_every_builtin_view_exists_after_open_store_on_a_fresh_database(database_url: str) -> None:
    with trio.fail_after(60):
        async with open_store(database_url):
            pass
    assert set(view_oids(database_url)) == {v.qualified for v in builtin_views()}
    assert {f"{s}.{n}" for s, n in query(database_url, "SELECT schema_name, view_name FROM views")} == \
        set(view_oids(database_url))
    # empty but queryable, with the declared columns, typed
    assert query(database_url, "SELECT count(*) FROM freshd_odoo.sale_orders") == [(0,)]
    types = dict(query(database_url, "SELECT column_name, data_type FROM information_schema.columns"
                                     " WHERE table_schema = 'freshd_woocommerce' AND table_name = 'orders'"))
    assert types["id"] == "bigint" and types["total"] == "numeric" and types["line_items"] == "jsonb"
    assert types["created_at"] == "timestamp with time zone" and types["connection"] == "text"


async def test_woocommerce_customers_read_through_the_view_are_typed(database_url: str) -> None:
    sim = WooCommerceSimulator(records=30, seed=7, credentials={"consumer_key": "ck_conformance",
                                                                "consumer_secret": "cs_conformance"})
    with trio.fail_after(60):
        async with open_rig(database_url, sim, CASE.settings) as rig:
            outcome, _ = await rig.sync(JobKind.INITIAL)
    assert outcome.status == "completed"
    rows = query(database_url, "SELECT id, email, is_paying_customer, billing_city, updated_at, connection, tenant,"
                               " modified_at, deleted_at, version FROM freshd_woocommerce.customers ORDER BY id")
    assert len(rows) == sim.count("customers") == 30
    for rid, email, paying, city, updated, connection, tenant, modified, deleted, version in rows:
        source = sim.get("customers", rid)  # an int id: the view's id is bigint
        assert (email, paying, city) == (source["email"], source["is_paying_customer"], source["billing"]["city"])
        assert updated == datetime.fromisoformat(source["date_modified_gmt"]).replace(tzinfo=UTC)
        assert (connection, tenant, deleted, version) == ("woo", "default", None, 1)
        assert isinstance(modified, datetime) and modified.tzinfo is not None
    orders = query(database_url, "SELECT id, total FROM freshd_woocommerce.orders ORDER BY id LIMIT 1")
    assert orders[0][1] == Decimal(sim.get("orders", orders[0][0])["total"])


async def test_a_malformed_value_reads_as_null_not_an_error(database_url: str) -> None:
    async with open_store(database_url) as store:
        row, _ = await store.call(
            connections.upsert_connection, store.keyring, name="shop", tenant="t1", provider="woocommerce",
            base_url="http://127.0.0.1:1", options={}, credentials={"consumer_key": "k", "consumer_secret": "s"},
            source="admin")
    bad = ('{"id": "x7", "email": {"not": "text"}, "is_paying_customer": "maybe",'
           ' "date_modified_gmt": "2024-02-30T10:00:00", "date_created_gmt": "yesterday", "billing": "not an object"}')
    execute(database_url, "INSERT INTO records (connection_id, entity, external_id, payload, content_hash)"
                        " VALUES (%s, 'customers', 'x7', %s::jsonb, '\\x00')", row.id, bad)
    rows = query(database_url, "SELECT id, email, is_paying_customer, updated_at, created_at, billing_city, connection"
                               " FROM freshd_woocommerce.customers")
    # an object read as text is its JSON text; nothing else fits, so NULL
    assert rows == [(None, '{"not": "text"}', None, None, None, None, "shop")]


CASTS = [
    ("integer", "42", 42), ("integer", '"42"', 42), ("integer", "4.0", 4), ("integer", "4.5", None),
    ("integer", '"4x"', None), ("integer", "1e30", None), ("integer", "true", None), ("integer", "null", None),
    ("numeric", '"19.99"', Decimal("19.99")), ("numeric", "-3", Decimal(-3)), ("numeric", '"abc"', None),
    ("numeric", '"1e5"', Decimal("1e5")), ("numeric", "[1]", None),
    ("boolean", "true", True), ("boolean", '"False"', False), ("boolean", "0", False), ("boolean", '"yes"', None),
    ("text", '"a"', "a"), ("text", "12", "12"), ("text", "null", None),
    ("jsonb", "null", None), ("jsonb", '{"a": 1}', {"a": 1}),
    ("timestamptz", '"2024-05-01T10:00:00Z"', datetime(2024, 5, 1, 10, tzinfo=UTC)),
    ("timestamptz", '"2024-05-01T10:00:00"', datetime(2024, 5, 1, 10, tzinfo=UTC)),  # no offset: UTC
    ("timestamptz", '"2024-05-01 10:00:00+02:00"', datetime(2024, 5, 1, 8, tzinfo=UTC)),
    ("timestamptz", '"2024-05-01T10:00:00.250-0130"', datetime(2024, 5, 1, 11, 30, 0, 250000, tzinfo=UTC)),
    ("timestamptz", '"2024-05-01"', datetime(2024, 5, 1, tzinfo=UTC)),
    ("timestamptz", "1714557600", datetime(2024, 5, 1, 10, tzinfo=UTC)),
    ("timestamptz", "1714557600000", datetime(2024, 5, 1, 10, tzinfo=UTC)),
    ("timestamptz", '"2024-02-30"', None), ("timestamptz", '"2024-13-01"', None),
    ("timestamptz", '"2024-05-01T25:00:00"', None), ("timestamptz", '"0000-01-01"', None),
    ("timestamptz", '"May 1st"', None), ("timestamptz", '""', None), ("timestamptz", "false", None),
]


async def test_casts_give_null_for_what_does_not_fit(database_url: str) -> None:
    async with open_store(database_url):
        pass
    got = [(cast, value, query(database_url, f"SELECT freshd.as_{cast}(%s::jsonb)", value)[0][0])
           for cast, value, _ in CASTS]
    assert got == CASTS


async def test_a_changed_declaration_rebuilds_that_view_only(database_url: str,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    async with open_store(database_url):
        pass
    before = view_oids(database_url)
    hashes = query(database_url, "SELECT schema_name, view_name, hash, created_at FROM views ORDER BY 1, 2")
    # unchanged: no DDL at all (same oids, same rows)
    assert await trio.to_thread.run_sync(ensure_views, database_url) == []
    async with open_store(database_url):
        pass
    assert view_oids(database_url) == before
    assert query(database_url, "SELECT schema_name, view_name, hash, created_at FROM views ORDER BY 1, 2") == hashes

    customers, *others = WooCommerceConnector.streams
    declared = dataclasses.replace(customers, columns=(*customers.columns, *columns("nickname=meta.nick")))
    monkeypatch.setattr(WooCommerceConnector, "streams", (declared, *others))
    async with open_store(database_url):
        pass
    after = view_oids(database_url)
    assert after["freshd_woocommerce.customers"] != before["freshd_woocommerce.customers"]
    assert {k: v for k, v in after.items() if k != "freshd_woocommerce.customers"} == \
        {k: v for k, v in before.items() if k != "freshd_woocommerce.customers"}
    assert query(database_url, "SELECT nickname FROM freshd_woocommerce.customers") == []

    # a stream no provider declares any more: its view goes
    monkeypatch.setattr(WooCommerceConnector, "streams", (declared, others[0]))
    assert await trio.to_thread.run_sync(ensure_views, database_url) == ["freshd_woocommerce.products"]
    assert "freshd_woocommerce.products" not in view_oids(database_url)


async def test_a_rebuild_the_database_refuses_keeps_the_old_view_and_still_opens(
        database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    async with open_store(database_url):
        pass
    execute(database_url, "CREATE VIEW public.mine AS SELECT id, email FROM freshd_woocommerce.customers")
    before = view_oids(database_url)
    customers, *others = WooCommerceConnector.streams
    monkeypatch.setattr(WooCommerceConnector, "streams",
                        (dataclasses.replace(customers, columns=columns("email")), *others))
    with trio.fail_after(30):
        async with open_store(database_url):
            pass
    assert view_oids(database_url) == before
    assert query(database_url, "SELECT count(*) FROM public.mine") == [(0,)]


async def test_two_members_opening_a_fresh_database_together_both_start(database_url: str) -> None:
    opened = []

    async def member() -> None:
        async with open_store(database_url):
            opened.append(True)

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(member)
    assert len(opened) == 3
    assert set(view_oids(database_url)) == {v.qualified for v in builtin_views()}


async def test_a_declaration_change_seen_by_two_members_at_once_is_applied_once(
        database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    async with open_store(database_url):
        pass
    customers, *others = WooCommerceConnector.streams
    monkeypatch.setattr(WooCommerceConnector, "streams",
                        (dataclasses.replace(customers, columns=columns("email")), *others))
    results: list[list[str]] = []

    async def member() -> None:
        results.append(await trio.to_thread.run_sync(ensure_views, database_url))

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for _ in range(2):
                nursery.start_soon(member)
    assert sorted(results) == [[], ["freshd_woocommerce.customers"]]


REST_STREAMS = [{"name": "contacts", "path": "contacts", "paginator": "none", "view_columns": [
    {"name": "email"}, {"name": "age", "path": "profile.age", "type": "integer"}, {"name": "id", "type": "integer"}]}]


async def test_rest_connections_declare_their_views_in_their_options(database_url: str) -> None:
    async with open_store(database_url) as store:
        row, _ = await store.call(
            connections.upsert_connection, store.keyring, name="crm", tenant="t1", provider="rest",
            base_url="http://127.0.0.1:1", options={"streams": REST_STREAMS}, credentials={}, source="admin")
    payload = '{"id": 5, "email": "a@example.com", "profile": {"age": "41"}}'
    execute(database_url, "INSERT INTO records (connection_id, entity, external_id, payload, content_hash)"
                        " VALUES (%s, 'contacts', '5', %s::jsonb, '\\x00')", row.id, payload)
    assert await trio.to_thread.run_sync(ensure_views, database_url) == ["freshd_rest.contacts"]
    assert query(database_url, "SELECT id, email, age, connection FROM freshd_rest.contacts") == \
        [(5, "a@example.com", 41, "crm")]


def test_rest_column_declarations_are_checked_with_the_option_path() -> None:
    def streams(column: dict[str, str]) -> object:
        return RestConnector.declared_streams({"streams": [{**REST_STREAMS[0], "view_columns": [column]}]})

    with pytest.raises(ConfigError, match=r"options.streams\[0\].view_columns\[0\].type: unknown column type 'int'"):
        streams({"name": "age", "type": "int"})
    with pytest.raises(ConfigError, match=r"view_columns\[0\].name: column name 'version' is taken"):
        streams({"name": "version"})
    with pytest.raises(ConfigError, match=r"view_columns\[0\].path: 'a..b' is not a dotted path"):
        streams({"name": "x", "path": "a..b"})
    with pytest.raises(ConfigError, match=r"view_columns\[0\].nmae: unknown key 'nmae'; valid keys: name, path, type"):
        streams({"nmae": "x"})
    with pytest.raises(ValueError, match="bad column name"):
        Column("Email", "email")


def test_data_md_lists_the_views_as_declared() -> None:
    text = DATA_MD.read_text(encoding="utf-8")
    begin, end = "<!-- views: python -m freshd.store.views --markdown -->\n", "<!-- /views -->"
    assert begin in text and end in text
    listed = text.split(begin, 1)[1].split(end, 1)[0]
    assert listed == markdown(builtin_views()), "docs/DATA.md is stale: run python -m freshd.store.views --markdown"
