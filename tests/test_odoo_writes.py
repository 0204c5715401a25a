"""Odoo writes: the simulator's ORM writes driven by public clients, and the connector's Writer on it."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import AsyncIterator
from typing import Any

import odoolib
import odoorpc
import pytest
import trio

from freshd.connectors.base import ConnectionSettings
from freshd.connectors.odoo.connector import OdooConnector
from freshd.connectors.odoo.simulator import COUNTRY_IDS, OdooSimulator
from freshd.connectors.simulator import serve_asgi
from freshd.connectors.writes import Create, Update, Writer, Written
from freshd.errors import Ambiguous, DuplicateKey, ItemError, ReauthRequired, Rejected
from freshd.policies.gate import ConnectionPolicies
from freshd.policies.limits import ProviderLimits
from tests.test_public_clients import blocking

CREDS = {"database": "acme", "username": "api@acme.example", "api_key": "0d1f2e3c4b5a69788796"}
APIS = ["jsonrpc", "json2"]
FR = COUNTRY_IDS["FR"]


@pytest.fixture
async def served(nursery: trio.Nursery) -> AsyncIterator[tuple[OdooSimulator, int]]:
    sim = OdooSimulator(records=20, seed=4, credentials=CREDS, unique_default_code=True)
    port = await nursery.start(functools.partial(serve_asgi, sim.app, "127.0.0.1", 0))
    yield sim, port


def connector(port: int, api: str, *, deadline: float | None = None) -> OdooConnector:
    settings = ConnectionSettings("erp", "odoo", f"http://127.0.0.1:{port}", credentials={"api_key": CREDS["api_key"]},
                                  options={"database": CREDS["database"], "username": CREDS["username"], "api": api})
    policies = ConnectionPolicies.standalone("odoo", {}, settings.options, name="erp")
    if deadline is not None:
        policies = dataclasses.replace(policies, limits=ProviderLimits(request_deadline=deadline))
    return OdooConnector(settings, policies=policies)


def partner(reference: str, **values: Any) -> Create:
    return Create({"name": f"Client {reference}", "email": f"{reference}@example.com", "country_id": FR, **values},
                  reference)


# --- (a) the simulator's writes, driven by public clients ---------------------------------------------------


def odoorpc_session(port: int) -> odoorpc.ODOO:
    client = odoorpc.ODOO("127.0.0.1", port=port, timeout=10)
    client.login(CREDS["database"], CREDS["username"], CREDS["api_key"])
    return client


async def test_odoorpc_creates_writes_archives_and_unlinks(served: tuple[OdooSimulator, int]) -> None:
    sim, port = served
    with trio.fail_after(30):
        client = await blocking(odoorpc_session, port)
        one = await blocking(client.execute_kw, "res.partner", "create", [{"name": "Ada", "country_id": FR}])
        many = await blocking(client.execute_kw, "res.partner", "create", [[{"name": "Grace"}, {"name": "Alan"}]])
        written = await blocking(client.execute_kw, "res.partner", "write", [[one, *many], {"phone": "+33 1"}])
        archived = await blocking(client.execute_kw, "res.partner", "write", [[many[0]], {"active": False}])
        gone = await blocking(client.execute_kw, "res.partner", "unlink", [[many[1]]])
        again = await blocking(client.execute_kw, "res.partner", "unlink", [[many[1]]])  # already deleted: fine
        rows = await blocking(client.execute_kw, "res.partner", "read", [[one, many[0]], ["country_id", "active"]])
    assert isinstance(one, int) and isinstance(many, list) and len(many) == 2  # B.1: int for one dict
    assert written is archived is gone is again is True
    assert rows == [{"id": one, "country_id": [FR, "France"], "active": True},
                    {"id": many[0], "country_id": False, "active": False}]
    # one call, one transaction start: every record it wrote has the same write_date
    assert len({sim.docs["res.partner"][i]["write_date"] for i in (one, many[0])}) == 1
    assert many[1] not in sim.docs["res.partner"]


async def test_odoorpc_sees_odoos_error_envelopes(served: tuple[OdooSimulator, int]) -> None:
    sim, port = served
    sim.forbidden.add(("sale.order", "create"))

    def refused(model: str, method: str, args: list[Any]) -> dict[str, Any]:
        client = odoorpc_session(port)
        with pytest.raises(odoorpc.error.RPCError) as caught:
            client.execute_kw(model, method, args)
        info: dict[str, Any] = caught.value.info["data"]
        return info

    before = len(sim.docs["res.partner"])
    with trio.fail_after(30):
        nameless = await blocking(refused, "res.partner", "create", [[{"name": "ok"}, {"email": "x@example.com"}]])
        unknown = await blocking(refused, "res.partner", "create", [{"name": "x", "colour": "red"}])
        dangling = await blocking(refused, "res.partner", "create", [{"name": "x", "country_id": 9999}])
        denied = await blocking(refused, "sale.order", "create", [{"partner_id": sim.ids["res.partner"][0]}])
        missing = await blocking(refused, "res.partner", "write", [[999_999], {"name": "x"}])
    assert nameless["name"] == "odoo.exceptions.ValidationError"
    assert nameless["message"] == "The operation cannot be completed: Contacts require a name"
    assert len(sim.docs["res.partner"]) == before  # the call is one transaction: "ok" was rolled back too
    assert unknown["name"] == "builtins.ValueError"
    assert unknown["message"] == "Invalid field 'colour' on model 'res.partner'"
    assert dangling["name"] == "odoo.exceptions.ValidationError"
    assert "Constraint: res_partner_country_id_fkey" in dangling["message"]
    assert denied["name"] == "odoo.exceptions.AccessError" and "(sale.order)" in denied["message"]
    assert missing["name"] == "odoo.exceptions.MissingError"


async def test_odoo_client_lib_loads_with_external_ids_and_creates_over_json2(
        served: tuple[OdooSimulator, int]) -> None:
    sim, port = served
    existing_code = sim.docs["product.product"][sim.ids["product.product"][0]]["default_code"]

    def over_jsonrpc() -> tuple[Any, ...]:
        connection = odoolib.get_connection(hostname="127.0.0.1", protocol="jsonrpc", port=port,
                                            database=CREDS["database"], login=CREDS["username"],
                                            password=CREDS["api_key"])
        products = connection.get_model("product.product")
        fields = ["id", "name", "default_code", "list_price"]
        first = products.load(fields, [["shop.p1", "Lamp", "LAMP-1", "12.5"], ["p2", "Desk", "DESK-1", "99"]],
                              context={"module": "shop"})
        updated = products.load(fields, [["shop.p1", "Lamp XL", "LAMP-1", "14"]], context={"module": "shop"})
        taken = products.load(fields, [["shop.p3", "Chair", existing_code, "5"]], context={"module": "shop"})
        xmlids = connection.get_model("ir.model.data").search_read([("module", "=", "shop")],
                                                                   ["name", "model", "res_id"])
        return first, updated, taken, xmlids

    def over_json2() -> tuple[Any, ...]:
        connection = odoolib.get_connection(hostname="127.0.0.1", protocol="json2", port=port,
                                            database=CREDS["database"], password=CREDS["api_key"])
        partners = connection.get_model("res.partner")
        created = partners.create(vals_list=[{"name": "Hedy"}])
        with pytest.raises(ValueError, match=r"cannot call res\.partner\.create with ids"):
            partners.create(ids=[1], vals_list=[{"name": "Hedy"}])
        with pytest.raises(ValueError, match="Unexpected status code 404"):
            partners.write(ids=[999_999], vals={"name": "x"})  # MissingError: 404
        with pytest.raises(ValueError, match="Contacts require a name"):
            partners.create(vals_list=[{"email": "x@example.com"}])  # ValidationError: 422
        return (created,)

    with trio.fail_after(30):
        first, updated, taken, xmlids = await blocking(over_jsonrpc)
        (created,) = await blocking(over_json2)
    assert first["messages"] == [] and len(first["ids"]) == 2
    assert updated["ids"] == first["ids"][:1]  # the same external id: the record is updated, not duplicated
    assert sim.docs["product.product"][first["ids"][0]]["name"] == "Lamp XL"
    assert taken["ids"] is False and "must be unique" in taken["messages"][0]["message"]
    assert sorted((x["name"], x["res_id"]) for x in xmlids) == [("p1", first["ids"][0]), ("p2", first["ids"][1])]
    assert isinstance(created, list) and len(created) == 1  # JSON-2 create: always a list


# --- (b) the connector's Writer ---------------------------------------------------------------------------------


@pytest.mark.parametrize("api", APIS)
async def test_outcomes_come_back_in_the_order_of_the_operations(served: tuple[OdooSimulator, int],
                                                                   api: str) -> None:
    sim, port = served
    odoo = connector(port, api)
    assert isinstance(odoo, Writer)
    first, second = sim.ids["res.partner"][:2]
    ops = [partner("r1"), Update(str(first), {"phone": "+33 9"}), partner("r2", zip="75002"),
           Update(str(second), {"phone": "+33 9"}), Update(str(first), {"city": "Lyon"})]
    try:
        with trio.fail_after(30):
            outcomes = await odoo.write("partners", ops)
    finally:
        await odoo.aclose()
    assert all(isinstance(o, Written) for o in outcomes), outcomes
    written = [o for o in outcomes if isinstance(o, Written)]
    assert written[0].record["name"] == "Client r1" and written[0].record["country_id"] == [FR, "France"]
    assert written[2].record["zip"] == "75002"
    assert [written[i].external_id for i in (1, 3, 4)] == [str(first), str(second), str(first)]
    assert set(written[0].record) == {"id", *odoo.fields["partners"]}  # a listing's shape
    assert sim.docs["res.partner"][first]["city"] == "Lyon" and sim.docs["res.partner"][second]["phone"] == "+33 9"


@pytest.mark.parametrize("api", APIS)
async def test_one_bad_item_does_not_fail_the_others(served: tuple[OdooSimulator, int], api: str) -> None:
    sim, port = served
    odoo = connector(port, api)
    before = len(sim.docs["res.partner"])
    deleted = sim.ids["res.partner"][-1]
    sim.unlink("res.partner", deleted)
    kept = sim.ids["res.partner"][0]
    try:
        with trio.fail_after(30):
            created = await odoo.write("partners", [partner("g1"), Create({"email": "nameless@example.com"}, "bad"),
                                                    partner("g2")])
            updated = await odoo.write("partners", [Update(str(kept), {"ref": "X1"}),
                                                    Update(str(deleted), {"ref": "X1"})])
    finally:
        await odoo.aclose()
    assert isinstance(created[0], Written) and isinstance(created[2], Written)
    assert isinstance(created[1], Rejected) and "Contacts require a name" in str(created[1])
    assert len(sim.docs["res.partner"]) == before - 1 + 2
    assert isinstance(updated[0], Written) and updated[0].record["ref"] == "X1"
    assert type(updated[1]) is ItemError and updated[1].external_id == str(deleted)  # MissingError


@pytest.mark.parametrize("api", APIS)
async def test_a_taken_default_code_is_a_duplicate_key(served: tuple[OdooSimulator, int], api: str) -> None:
    sim, port = served
    existing = sim.docs["product.product"][sim.ids["product.product"][0]]
    odoo = connector(port, api)
    try:
        with trio.fail_after(30):
            outcomes = await odoo.write("products", [
                Create({"name": "Lamp", "default_code": "LAMP-9", "list_price": 12.5}, "p1"),
                Create({"name": "Copy", "default_code": existing["default_code"], "list_price": 1.0}, "p2"),
                Create({"name": "Scan", "default_code": "SCAN-1", "list_price": 1.0, "barcode": existing["barcode"]},
                       "p3")])
    finally:
        await odoo.aclose()
    assert isinstance(outcomes[0], Written) and outcomes[0].record["display_name"] == "[LAMP-9] Lamp"
    assert isinstance(outcomes[1], DuplicateKey) and "must be unique" in str(outcomes[1])
    assert isinstance(outcomes[2], DuplicateKey) and "already assigned" in str(outcomes[2])


@pytest.mark.parametrize("api", APIS)
async def test_find_created_finds_only_our_references(served: tuple[OdooSimulator, int], api: str) -> None:
    sim, port = served
    # someone else's import with the same name in another module, and an order with another customer ref
    sim.execute("res.partner", "load", [["id", "name"], [["mine-1", "Not ours"]]], {})
    customer = sim.ids["res.partner"][0]
    sim.execute("sale.order", "create", [{"partner_id": customer, "client_order_ref": "PO-77"}], {})
    product = sim.ids["product.product"][0]
    odoo = connector(port, api)
    try:
        with trio.fail_after(30):
            made = await odoo.write("partners", [partner("mine-1"), partner("mine-2")])
            order = Create({"partner_id": customer, "origin": "WC#1001",
                            "order_line": [[0, 0, {"product_id": product, "product_uom_qty": 2, "price_unit": 5}]]},
                           "wc-order-1001")
            (placed,) = await odoo.write("sale_orders", [order])
            found = await odoo.find_created("partners", [partner("mine-1"), partner("mine-2"), partner("mine-3")])
            orders = await odoo.find_created("sale_orders", [order, Create({}, "PO-77x")])
    finally:
        await odoo.aclose()
    assert {k: v.external_id for k, v in found.items()} == {"mine-1": made[0].external_id,  # type: ignore[union-attr]
                                                            "mine-2": made[1].external_id}  # type: ignore[union-attr]
    assert isinstance(placed, Written) and placed.record["amount_total"] == 10.0
    assert placed.record["client_order_ref"] == "wc-order-1001"
    assert list(orders) == ["wc-order-1001"] and orders["wc-order-1001"].external_id == placed.external_id


@pytest.mark.parametrize("api", APIS)
async def test_a_create_whose_answer_is_lost_is_ambiguous_and_not_resent(served: tuple[OdooSimulator, int],
                                                                          api: str) -> None:
    sim, port = served
    odoo = connector(port, api, deadline=1.0)
    before = len(sim.docs["res.partner"])
    sim.lose_answers = 1  # applied and committed, then no answer
    try:
        with trio.fail_after(30):
            with pytest.raises(Ambiguous):
                await odoo.write("partners", [partner("lost-1")])
            assert len(sim.docs["res.partner"]) == before + 1  # created once, never resent
            found = await odoo.find_created("partners", [partner("lost-1")])
    finally:
        await odoo.aclose()
    assert list(found) == ["lost-1"] and found["lost-1"].record["name"] == "Client lost-1"


@pytest.mark.parametrize("api", APIS)
async def test_a_revoked_api_key_is_reauth_required(served: tuple[OdooSimulator, int], api: str) -> None:
    sim, port = served
    odoo = connector(port, api)
    before = len(sim.docs["res.partner"])
    try:
        with trio.fail_after(30):
            await odoo.write("partners", [Update(str(sim.ids["res.partner"][0]), {"phone": "1"})])  # logged in
            sim.new_api_key()
            with pytest.raises(ReauthRequired):
                await odoo.write("partners", [partner("after-revoke")])
    finally:
        await odoo.aclose()
    assert len(sim.docs["res.partner"]) == before


@pytest.mark.parametrize("api", APIS)
async def test_archive_and_access_refusals(served: tuple[OdooSimulator, int], api: str) -> None:
    sim, port = served
    sim.forbidden.add(("product.product", "create"))
    rid = sim.ids["res.partner"][3]
    odoo = connector(port, api)
    try:
        with trio.fail_after(30):
            archived = await odoo.archive("partners", str(rid))
            (denied,) = await odoo.write("products", [Create({"name": "Nope"}, "n1")])
            (unknown,) = await odoo.write("partners", [Update(str(rid), {"colour": "red"})])
    finally:
        await odoo.aclose()
    assert isinstance(archived, Written) and archived.record["active"] is False
    assert sim.docs["res.partner"][rid]["active"] is False
    assert isinstance(denied, Rejected) and "You are not allowed to create 'Product'" in str(denied)
    assert isinstance(unknown, Rejected) and "Invalid field 'colour'" in str(unknown)
