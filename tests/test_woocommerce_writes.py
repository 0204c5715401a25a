"""WooCommerce writes: the simulator's write routes driven by the official `woocommerce` client, and
freshd's Writer (connectors/woocommerce/writes.py) against the simulator over loopback."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import pytest
import trio
from woocommerce import API as WooCommerceAPI

from freshd.connectors.base import ConnectionSettings
from freshd.connectors.simulator import serve_asgi
from freshd.connectors.woocommerce.connector import WooCommerceConnector
from freshd.connectors.woocommerce.simulator import WooCommerceSimulator
from freshd.connectors.writes import REFERENCE_KEY, Create, Update, Writer, Written
from freshd.errors import Ambiguous, DuplicateKey, ItemError, PermanentError, ReauthRequired, Rejected
from freshd.policies.limits import ProviderLimits

T = TypeVar("T")
CREDS = {"consumer_key": "ck_writes", "consumer_secret": "cs_writes"}
BATCH = "/wp-json/wc/v3/{}/batch"


async def blocking(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    return await trio.to_thread.run_sync(functools.partial(fn, *args, **kwargs))


class Clock:
    """The simulator's clock, moved by hand (date_modified has second resolution)."""

    def __init__(self) -> None:
        self.now = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def tick(self, seconds: int = 5) -> None:
        self.now += timedelta(seconds=seconds)


@dataclass
class Shop:
    sim: WooCommerceSimulator
    port: int
    clock: Clock

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def api(self) -> WooCommerceAPI:
        # plain HTTP: the official client signs with OAuth 1.0a
        return WooCommerceAPI(url=self.url, consumer_key=CREDS["consumer_key"],
                              consumer_secret=CREDS["consumer_secret"], version="wc/v3", timeout=10)

    def connector(self, url: str | None = None, **credentials: str) -> WooCommerceConnector:
        return WooCommerceConnector(ConnectionSettings("shop", "woocommerce", url or self.url,
                                                       credentials={**CREDS, **credentials}))

    def batches(self, entity: str) -> int:
        return self.sim.app.stats[BATCH.format(entity)]


@pytest.fixture
async def shop(nursery: trio.Nursery) -> AsyncIterator[Shop]:
    clock = Clock()
    sim = WooCommerceSimulator(records=20, seed=4, credentials=CREDS, clock=clock, products=5)
    port = await nursery.start(functools.partial(serve_asgi, sim.app, "127.0.0.1", 0))
    yield Shop(sim, port, clock)


async def with_connector(shop: Shop, use: Callable[[WooCommerceConnector], Awaitable[T]], **kw: Any) -> T:
    connector = shop.connector(**kw)
    try:
        with trio.fail_after(30):
            return await use(connector)
    finally:
        await connector.aclose()


def refs(record: dict[str, Any]) -> list[Any]:
    return [m["value"] for m in record.get("meta_data", []) if m["key"] == REFERENCE_KEY]


# --- (a) the simulator's write routes, through the official client ----------------------------------


async def test_official_client_create_answers_201_with_location_and_update_moves_date_modified(shop: Shop) -> None:
    api = shop.api()
    with trio.fail_after(30):
        created = await blocking(api.post, "customers", {"email": "ada@example.org", "first_name": "Ada"})
        assert created.status_code == 201, created.text
        cid = created.json()["id"]
        assert created.headers["location"] == f"{shop.url}/wp-json/wc/v3/customers/{cid}"
        shop.clock.tick()
        empty = await blocking(api.put, f"customers/{cid}", {})  # every save bumps date_modified (§A.5)
        product = await blocking(api.post, "products", {"name": "Lamp", "sku": "LAMP-1"})
        shop.clock.tick()
        meta_only = await blocking(api.put, f"products/{product.json()['id']}",
                                   {"meta_data": [{"key": "k", "value": 1}]})
    assert empty.status_code == 200 and empty.json()["date_modified_gmt"] > created.json()["date_modified_gmt"]
    assert meta_only.json()["date_modified_gmt"] > product.json()["date_modified_gmt"]
    assert created.json()["role"] == "customer"


async def test_official_client_duplicate_email_of_any_role_is_registration_error_email_exists(shop: Shop) -> None:
    shop.sim.create("customers", email="boss@example.org", role="shop_manager")  # not a customer
    api = shop.api()
    with trio.fail_after(30):
        refused = await blocking(api.post, "customers", {"email": "Boss@example.org"})
        default = await blocking(api.get, "customers", params={"email": "boss@example.org"})
        everyone = await blocking(api.get, "customers", params={"email": "boss@example.org", "role": "all"})
        partial = await blocking(api.get, "customers", params={"email": "boss@example", "role": "all"})
        missing = await blocking(api.post, "customers", {"first_name": "No email"})
        bad = await blocking(api.post, "customers", {"email": "not-an-email"})
        with_id = await blocking(api.post, "customers", {"id": 3, "email": "x@example.org"})
        taken = await blocking(api.put, "customers/2", {"email": shop.sim.get("customers", 3)["email"]})
        unknown = await blocking(api.put, "customers/9999", {"first_name": "x"})
    assert refused.status_code == 400 and refused.json()["code"] == "registration-error-email-exists"
    assert refused.json()["message"].startswith("An account is already registered with Boss@example.org.")
    assert default.json() == []  # role defaults to customer
    assert [c["email"] for c in everyone.json()] == ["boss@example.org"] and partial.json() == []  # exact
    assert (missing.status_code, missing.json()["code"]) == (400, "rest_missing_callback_param")
    assert missing.json()["data"]["params"] == ["email"]
    assert (bad.status_code, bad.json()["code"]) == (400, "customer_invalid_email")
    assert (with_id.status_code, with_id.json()["code"]) == (400, "woocommerce_rest_customer_exists")
    assert (taken.status_code, taken.json()["code"]) == (400, "woocommerce_rest_customer_invalid_email")
    assert (unknown.status_code, unknown.json()["code"]) == (404, "wc_user_invalid_id")


async def test_official_client_duplicate_sku_names_the_holder_in_resource_id(shop: Shop) -> None:
    api = shop.api()
    holder = shop.sim.get("products", 1)
    with trio.fail_after(30):
        on_create = await blocking(api.post, "products", {"name": "Copy", "sku": holder["sku"]})
        on_update = await blocking(api.put, "products/2", {"sku": holder["sku"]})
        same = await blocking(api.put, "products/1", {"sku": holder["sku"]})  # its own SKU: fine
        found = await blocking(api.get, "products", params={"sku": f"{holder['sku']},SKU-00002,nope"})
        unknown = await blocking(api.put, "products/9999", {"name": "x"})
    for answer in (on_create, on_update):
        body = answer.json()
        assert answer.status_code == 400 and body["code"] == "product_invalid_sku"
        assert body["data"]["resource_id"] == 1 and body["data"]["status"] == 400
    assert same.status_code == 200
    assert sorted(p["id"] for p in found.json()) == [1, 2]
    assert (unknown.status_code, unknown.json()["code"]) == (400, "woocommerce_rest_product_invalid_id")


async def test_official_client_orders_need_a_product_reference_and_a_known_customer(shop: Shop) -> None:
    api = shop.api()
    with trio.fail_after(30):
        no_product = await blocking(api.put, "orders/1", {"line_items": [{"quantity": 2}]})
        no_customer = await blocking(api.put, "orders/1", {"customer_id": 9999})
        fine = await blocking(api.put, "orders/1", {"customer_id": 3, "line_items": [{"product_id": 4, "quantity": 1}]})
    assert no_product.json()["code"] == "woocommerce_rest_required_product_reference"
    assert no_customer.json()["code"] == "woocommerce_rest_invalid_customer_id"
    assert fine.status_code == 200 and len(fine.json()["line_items"]) == 2


async def test_official_client_batch_reports_failures_per_item_and_keeps_the_rest(shop: Shop) -> None:
    api = shop.api()
    before = shop.sim.counts()["customers"]
    taken = shop.sim.get("customers", 1)["email"]
    with trio.fail_after(30):
        answer = await blocking(api.post, "customers/batch", {
            "create": [{"email": "one@example.org"}, {"email": taken}, {"first_name": "no email"},
                       {"email": "two@example.org"}],
            "update": [{"id": 2, "first_name": "Changed"}, {"id": 9999, "first_name": "Ghost"}],
        })
    assert answer.status_code == 200  # whatever failed
    body = answer.json()
    created = body["create"]
    assert [c["id"] != 0 and "error" not in c for c in created] == [True, False, False, True]
    assert created[1]["id"] == 0 and created[1]["error"]["code"] == "registration-error-email-exists"
    assert created[1]["error"]["data"] == {"status": 400}
    # route validation is skipped in a batch: the data layer refuses the missing email instead
    assert created[2]["error"]["code"] == "registration-error-invalid-email"
    assert body["update"][0]["first_name"] == "Changed"
    assert body["update"][1] == {"id": 9999, "error": {"code": "woocommerce_rest_invalid_id",
                                                       "message": "Invalid resource ID.", "data": {"status": 400}}}
    assert shop.sim.counts()["customers"] == before + 2  # no transaction: the good items stay


async def test_official_client_meta_data_updates_by_id_by_key_and_null_deletes(shop: Shop) -> None:
    api = shop.api()
    with trio.fail_after(30):
        created = await blocking(api.post, "products", {"name": "Meta", "meta_data": [
            {"key": "a", "value": "1"}, {"key": "b", "value": "2"}]})
        pid = created.json()["id"]
        rows = {m["key"]: m["id"] for m in created.json()["meta_data"]}
        shop.sim.collections["products"].put({**shop.sim.get("products", pid), "meta_data": [
            *shop.sim.get("products", pid)["meta_data"], {"id": 5000, "key": "a", "value": "dup"}]})
        by_id = await blocking(api.put, f"products/{pid}",
                               {"meta_data": [{"id": rows["b"], "key": "b2", "value": "x"}]})
        by_key = await blocking(api.put, f"products/{pid}", {"meta_data": [{"key": "a", "value": "one"},
                                                                            {"key": "c", "value": "new"}]})
        deleted = await blocking(api.put, f"products/{pid}", {"meta_data": [{"key": "c", "value": None}]})
    assert [(m["key"], m["value"]) for m in by_id.json()["meta_data"]] == [("a", "1"), ("b2", "x"), ("a", "dup")]
    assert by_id.json()["meta_data"][1]["id"] == rows["b"]  # the row renamed, not a new one
    # without an id: the first row with the key takes the value, its duplicates go
    assert [(m["key"], m["value"]) for m in by_key.json()["meta_data"]] == [("a", "one"), ("b2", "x"), ("c", "new")]
    assert [m["key"] for m in deleted.json()["meta_data"]] == ["a", "b2"]


# --- (b) freshd's Writer against the simulator ------------------------------------------------------


async def test_writer_outcomes_come_in_order_with_per_item_refusals(shop: Shop) -> None:
    taken = shop.sim.get("customers", 5)["email"]

    async def use(c: WooCommerceConnector) -> list[Any]:
        assert isinstance(c, Writer)
        return await c.write("customers", [
            Create({"email": "new@example.org", "first_name": "New"}, reference="ref-1"),
            Create({"email": taken}, reference="ref-2"),
            Update("3", {"first_name": "Renamed"}),
            Create({"email": "bad@"}, reference="ref-3"),
            Update("9999", {"first_name": "Ghost"}),
            Update("4", {"email": taken}),
        ])

    out = await with_connector(shop, use)
    assert isinstance(out[0], Written) and refs(dict(out[0].record)) == ["ref-1"]
    assert REFERENCE_KEY in {m["key"] for m in shop.sim.get("customers", int(out[0].external_id))["meta_data"]}
    assert isinstance(out[1], DuplicateKey) and out[1].existing_id == "5"
    assert out[1].code == "registration-error-email-exists"
    assert isinstance(out[2], Written) and out[2].external_id == "3" and out[2].record["first_name"] == "Renamed"
    assert isinstance(out[3], Rejected) and out[3].code == "customer_invalid_email" and "Invalid email" in str(out[3])
    assert isinstance(out[4], Rejected) and out[4].external_id == "9999"
    assert out[4].code == "woocommerce_rest_invalid_id"
    # the update's "email address is invalid" is another user holding it: a duplicate, holder named
    assert isinstance(out[5], DuplicateKey) and out[5].existing_id == "5" and out[5].external_id == "4"
    assert shop.batches("customers") == 1


async def test_writer_duplicate_sku_reports_the_holder_as_existing_id(shop: Shop) -> None:
    async def use(c: WooCommerceConnector) -> list[Any]:
        return await c.write("products", [Create({"name": "Copy", "sku": "SKU-00002"}, reference="p-1"),
                                          Create({"name": "Own", "sku": "OWN-1"}, reference="p-2")])

    dup, ok = await with_connector(shop, use)
    assert isinstance(dup, DuplicateKey) and dup.existing_id == "2" and dup.code == "product_invalid_sku"
    assert isinstance(ok, Written) and ok.record["sku"] == "OWN-1" and refs(dict(ok.record)) == ["p-2"]


async def test_resent_create_whose_holder_carries_our_reference_is_written_not_a_duplicate(shop: Shop) -> None:
    """After a crash the engine may send a create again: the email/SKU is taken by our own record."""
    async def use(c: WooCommerceConnector) -> list[Any]:
        first = await c.write("customers", [Create({"email": "again@example.org"}, reference="r-again")])
        second = await c.write("customers", [Create({"email": "again@example.org"}, reference="r-again")])
        other = await c.write("customers", [Create({"email": "again@example.org"}, reference="r-other")])
        return [*first, *second, *other]

    first, second, other = await with_connector(shop, use)
    assert isinstance(first, Written) and isinstance(second, Written)
    assert second.external_id == first.external_id
    assert isinstance(other, DuplicateKey) and other.existing_id == first.external_id


async def test_find_created_returns_only_records_that_carry_the_reference(shop: Shop) -> None:
    # someone else's records with the same natural keys, without our reference
    shop.sim.create("customers", email="theirs@example.org", role="subscriber")
    shop.sim.create("products", sku="THEIRS-1")
    creates = {
        "customers": [Create({"email": "ours@example.org"}, reference="c-ours"),
                      Create({"email": "theirs@example.org"}, reference="c-theirs"),
                      Create({"email": "never@example.org"}, reference="c-never")],
        "products": [Create({"sku": "OURS-1", "name": "x"}, reference="p-ours"),
                     Create({"sku": "THEIRS-1", "name": "y"}, reference="p-theirs")],
    }

    async def use(c: WooCommerceConnector) -> dict[str, dict[str, Written]]:
        await c.write("customers", creates["customers"][:1])
        await c.write("products", creates["products"][:1])
        return {entity: await c.find_created(entity, ops) for entity, ops in creates.items()}

    found = await with_connector(shop, use)
    assert set(found["customers"]) == {"c-ours"} and set(found["products"]) == {"p-ours"}
    assert found["customers"]["c-ours"].record["email"] == "ours@example.org"
    assert refs(dict(found["products"]["p-ours"].record)) == ["p-ours"]


def answers_lost_for_batches(app: Any) -> Any:
    """The batch is applied, then the answer never comes (a dropped connection, a proxy timeout)."""
    async def wrapped(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"].endswith("/batch"):
            async def drop(message: Any) -> None:
                pass
            await app(scope, receive, drop)
            await trio.sleep_forever()
        await app(scope, receive, send)
    return wrapped


async def test_create_batch_that_times_out_is_ambiguous_and_not_resent(shop: Shop, nursery: trio.Nursery) -> None:
    port = await nursery.start(functools.partial(serve_asgi, answers_lost_for_batches(shop.sim.app), "127.0.0.1", 0))
    before = shop.sim.counts()["customers"]
    creates = [Create({"email": f"lost{i}@example.org"}, reference=f"lost-{i}") for i in range(3)]

    async def use(c: WooCommerceConnector) -> dict[str, Written]:
        c.client.limits = ProviderLimits(request_deadline=1.0)
        with pytest.raises(Ambiguous):
            await c.write("customers", creates)
        return await c.find_created("customers", creates)  # what the engine does next

    found = await with_connector(shop, use, url=f"http://127.0.0.1:{port}")
    assert shop.batches("customers") == 1  # sent once, never again
    assert shop.sim.counts()["customers"] == before + 3  # applied once
    assert set(found) == {"lost-0", "lost-1", "lost-2"}


async def test_create_batch_answered_503_is_ambiguous_but_an_update_batch_is_retried(shop: Shop) -> None:
    async def use(c: WooCommerceConnector) -> list[Any]:
        shop.sim.app.faults.configure({"status": 503, "count": 1})
        with pytest.raises(Ambiguous):
            await c.write("products", [Create({"name": "x", "sku": "X-503"}, reference="x")])
        assert shop.batches("products") == 1
        shop.sim.app.faults.configure({"status": 503, "count": 1})
        return await c.write("products", [Update("1", {"name": "Retried"})])

    (updated,) = await with_connector(shop, use)
    assert isinstance(updated, Written) and updated.record["name"] == "Retried"
    assert shop.batches("products") == 3  # the refused create once, the update twice


async def test_write_answered_429_waits_out_retry_after_then_applies_once(shop: Shop) -> None:
    before = shop.sim.counts()["customers"]

    async def use(c: WooCommerceConnector) -> tuple[list[Any], float]:
        shop.sim.app.faults.configure({"status": 429, "count": 1, "retry_after": 1})
        started = trio.current_time()
        out = await c.write("customers", [Create({"email": "patient@example.org"}, reference="p")])
        return out, trio.current_time() - started

    (written,), waited = await with_connector(shop, use)
    assert isinstance(written, Written) and waited >= 0.9
    assert shop.batches("customers") == 2 and shop.sim.counts()["customers"] == before + 1


async def test_more_than_100_ops_are_split_into_batches_in_order(shop: Shop) -> None:
    ops = [Update(str(1 + i % 20), {"first_name": f"n{i}"}) for i in range(150)]

    out = await with_connector(shop, lambda c: c.write("customers", ops))
    assert shop.batches("customers") == 2
    assert [o.record["first_name"] for o in out if isinstance(o, Written)] == [f"n{i}" for i in range(150)]


async def test_archive_trashes_and_an_already_trashed_record_counts_as_done(shop: Shop) -> None:
    async def use(c: WooCommerceConnector) -> list[Any]:
        first = await c.archive("products", "3")
        again = await c.archive("products", "3")
        order = await c.archive("orders", "2")
        missing = await c.archive("orders", "9999")
        with pytest.raises(PermanentError):
            await c.archive("customers", "1")
        with pytest.raises(PermanentError, match="no natural key"):
            await c.write("orders", [Create({"status": "pending"}, reference="o")])
        return [first, again, order, missing]

    first, again, order, missing = await with_connector(shop, use)
    assert isinstance(first, Written) and first.record["status"] == "trash"
    assert isinstance(again, Written) and again.record["status"] == "trash"
    assert isinstance(order, Written) and shop.sim.get("orders", 2)["status"] == "trash"
    assert isinstance(missing, ItemError) and missing.code == "woocommerce_rest_shop_order_invalid_id"
    assert shop.sim.get("products", 3)["status"] == "trash"


async def test_write_with_rejected_credentials_raises_reauth(shop: Shop) -> None:
    async def use(c: WooCommerceConnector) -> list[Any]:
        return await c.write("customers", [Update("1", {"first_name": "x"})])

    with pytest.raises(ReauthRequired):
        await with_connector(shop, use, consumer_secret="cs_wrong")
