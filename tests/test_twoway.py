"""Two-way sync between a WooCommerce and an Odoo simulator, through a real daemon and freshctl."""

from __future__ import annotations

import functools
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio

from freshd.connectors.odoo.simulator import OdooSimulator
from freshd.connectors.simulator import serve_asgi
from freshd.connectors.woocommerce.simulator import WooCommerceSimulator
from tests.cases_odoo import CREDS as ODOO
from tests.helpers import query
from tests.test_daemon import CREDS, Running, connection_block, start_daemon


@dataclass
class Sides:
    shop: WooCommerceSimulator
    erp: OdooSimulator
    shop_url: str
    erp_url: str

    def config(self, *, pair: str = "", twoway: str = "") -> str:
        return (connection_block("shop", self.shop_url)
                + f'[[connections]]\nname = "erp"\nprovider = "odoo"\nbase_url = "{self.erp_url}"\n'
                  f'credentials = {{ api_key = "{ODOO["api_key"]}" }}\n'
                  f'options = {{ database = "{ODOO["database"]}", username = "{ODOO["username"]}" }}\n'
                + "[twoway]\nwrite_rate_per_minute = 50\n" + twoway
                + (pair or '[pairs.shop-erp]\nleft = "shop"\nright = "erp"\nentities = ["customers"]\n'))


@pytest.fixture
async def sides(nursery: trio.Nursery) -> AsyncIterator[Sides]:
    shop = WooCommerceSimulator(records=4, seed=11, credentials=CREDS)
    erp = OdooSimulator(records=4, seed=12, credentials=ODOO)
    shop_port = await nursery.start(functools.partial(serve_asgi, shop.app, host="127.0.0.1", port=0))
    erp_port = await nursery.start(functools.partial(serve_asgi, erp.app, host="127.0.0.1", port=0))
    yield Sides(shop, erp, f"http://127.0.0.1:{shop_port}", f"http://127.0.0.1:{erp_port}")


async def run_to_end(running: Running, *args: str) -> dict[str, Any]:
    started = await running.ctl_json("twoway", "start", "shop-erp", *args)
    assert started["state"] in ("queued", "processing")
    with trio.fail_after(60):
        while True:
            run = await running.ctl_json("twoway", "status", str(started["id"]))
            if run["state"] in ("done", "partial", "failed", "cancelled", "paused"):
                return run  # type: ignore[no-any-return]
            await trio.sleep(0.1)


FINISHED = ("done", "partial", "failed", "cancelled")


def partners_with_email(erp: OdooSimulator) -> dict[str, dict[str, Any]]:
    return {str(p["email"]).lower(): p for p in erp.docs["res.partner"].values() if p.get("email")}


def customers_by_email(shop: WooCommerceSimulator) -> dict[str, dict[str, Any]]:
    coll = shop.collections["customers"]
    return {str(c["email"]).lower(): c for c in (coll.get(rid) for rid in coll.docs)}


def link_of(running: Running, left_id: str, entity: str = "customers") -> tuple[str, dict[str, Any]]:
    rows = query(running.database_url, "SELECT right_id, base FROM links WHERE pair = 'shop-erp' AND entity = %s"
                 " AND left_id = %s", entity, left_id)
    assert len(rows) == 1, rows
    return str(rows[0][0]), rows[0][1]  # type: ignore[return-value]


async def test_first_run_creates_each_side_missing_records_and_a_second_run_writes_nothing(
    nursery: trio.Nursery, tmp_path: Path, database_url: str, sides: Sides,
) -> None:
    running = await start_daemon(nursery, tmp_path, database_url, sides.config())
    shop_before, erp_before = customers_by_email(sides.shop), partners_with_email(sides.erp)
    first = await run_to_end(running)
    assert first["state"] == "done", first
    assert first["writes"] == {"left": len(erp_before), "right": len(shop_before)}
    assert first["queue"]["pending"] == 0 and first["percent"] == 100.0
    assert first["plan"]["customers"]["create_left"] == len(erp_before)
    # every email now on both sides, exactly once (no record created twice)
    shop_after, erp_after = customers_by_email(sides.shop), partners_with_email(sides.erp)
    assert set(shop_after) == set(erp_after) == set(shop_before) | set(erp_before)
    assert sides.shop.counts()["customers"] == len(shop_after)
    # a created record carries freshd's reference (found again after a crash)
    some = next(iter(shop_after[e] for e in erp_before))
    assert any(m["key"] == "_freshd_ref" for m in some["meta_data"])

    second = await run_to_end(running)
    assert second["state"] == "done" and second["writes"] == {"left": 0, "right": 0}, second
    assert second["queue"]["total"] == 0


async def test_edits_of_different_fields_on_each_side_are_both_kept_on_both_sides(
    nursery: trio.Nursery, tmp_path: Path, database_url: str, sides: Sides,
) -> None:
    running = await start_daemon(nursery, tmp_path, database_url, sides.config())
    assert (await run_to_end(running))["state"] == "done"
    customer = next(iter(customers_by_email(sides.shop).values()))
    partner_id, _ = link_of(running, str(customer["id"]))
    await trio.sleep(1.1)  # both providers keep modification times in whole seconds
    sides.shop.update("customers", customer["id"], first_name="Renamed")
    sides.erp.write("res.partner", int(partner_id), phone="+33 9 99 99 99 99")
    run = await run_to_end(running)
    assert run["state"] == "done" and run["writes"] == {"left": 1, "right": 1}, json.dumps(run)
    partner = sides.erp.docs["res.partner"][int(partner_id)]
    assert partner["name"].startswith("Renamed ") and partner["phone"] == "+33 9 99 99 99 99"
    assert sides.shop.get("customers", customer["id"])["billing"]["phone"] == "+33 9 99 99 99 99"
    third = await run_to_end(running)
    log = await running.ctl_json("twoway", "log", str(third["id"]))
    assert third["writes"] == {"left": 0, "right": 0}, json.dumps(log)  # no echo, no ping-pong


async def test_same_field_changed_on_both_sides_is_one_data_mismatch_and_resolving_writes_the_choice(
    nursery: trio.Nursery, tmp_path: Path, database_url: str, sides: Sides,
) -> None:
    running = await start_daemon(nursery, tmp_path, database_url, sides.config())
    assert (await run_to_end(running))["state"] == "done"
    customer = next(iter(customers_by_email(sides.shop).values()))
    partner_id, base = link_of(running, str(customer["id"]))
    await trio.sleep(1.1)
    sides.shop.update("customers", customer["id"], billing={**customer["billing"], "city": "Ghent"})
    sides.erp.write("res.partner", int(partner_id), city="Bruges")
    run = await run_to_end(running)
    assert run["state"] == "partial" and run["writes"] == {"left": 0, "right": 0}, run
    assert run["conflicts"] == {"total": 1, "unresolved": 1, "by_type": {"DataMismatch": 1}}
    conflicts = await running.ctl_json("conflicts", "--pair", "shop-erp", "--unresolved")
    assert len(conflicts) == 1
    conflict = conflicts[0]
    assert conflict["type"] == "DataMismatch" and conflict["fields"] == ["city"]
    assert conflict["base"] == {"city": base["city"]}
    assert conflict["left"] == {"city": "Ghent"} and conflict["right"] == {"city": "Bruges"}
    # a second run does not open it twice
    await run_to_end(running)
    assert len(await running.ctl_json("conflicts", "--unresolved")) == 1

    # a bad resolution is refused and changes nothing
    bad = await running.ctl("conflicts", "resolve", str(conflict["id"]), "--value", "nosuchfield=1", check=False)
    assert bad.returncode != 0 and "no field(s) nosuchfield" in bad.stderr
    assert sides.erp.docs["res.partner"][int(partner_id)]["city"] == "Bruges"

    resolved = await running.ctl_json("conflicts", "resolve", str(conflict["id"]), "--take", "left")
    assert resolved["status"] == "resolved" and resolved["resolution"]["take"] == "left"
    assert sides.erp.docs["res.partner"][int(partner_id)]["city"] == "Ghent"
    assert sides.shop.get("customers", customer["id"])["billing"]["city"] == "Ghent"
    assert (await run_to_end(running))["writes"] == {"left": 0, "right": 0}


async def test_rules_settle_a_mismatch_without_a_person(
    nursery: trio.Nursery, tmp_path: Path, database_url: str, sides: Sides,
) -> None:
    pair = ('[pairs.shop-erp]\nleft = "shop"\nright = "erp"\n[pairs.shop-erp.customers]\nrule = "newest"\n'
            '[pairs.shop-erp.customers.rules]\nphone = "prefer_right"\n')
    running = await start_daemon(nursery, tmp_path, database_url, sides.config(pair=pair))
    assert (await run_to_end(running))["state"] == "done"
    customer = next(iter(customers_by_email(sides.shop).values()))
    partner_id, _ = link_of(running, str(customer["id"]))
    await trio.sleep(1.1)
    sides.erp.write("res.partner", int(partner_id), city="Bruges", phone="+32 1")
    await trio.sleep(1.1)  # the shop's edit is the newer one
    sides.shop.update("customers", customer["id"], billing={**customer["billing"], "city": "Ghent", "phone": "+32 2"})
    run = await run_to_end(running)
    assert run["state"] == "done", run
    assert run["conflicts"]["unresolved"] == 0 and run["conflicts"]["by_type"] == {"DataMismatch": 2}
    assert sides.erp.docs["res.partner"][int(partner_id)]["city"] == "Ghent"  # newest: the shop's
    assert sides.shop.get("customers", customer["id"])["billing"]["phone"] == "+32 1"  # prefer_right


async def test_unknown_pair_bad_mapping_and_bad_options_are_refused_and_change_nothing(
    nursery: trio.Nursery, tmp_path: Path, database_url: str, sides: Sides,
) -> None:
    running = await start_daemon(nursery, tmp_path, database_url, sides.config())
    unknown = await running.ctl("twoway", "start", "nope", check=False)
    assert unknown.returncode == 4 and "no pair 'nope'" in unknown.stderr
    entity = await running.ctl("twoway", "start", "shop-erp", "--entities", "invoices", check=False)
    assert entity.returncode == 1 and "has no entity invoices" in entity.stderr
    bad = await running.ctl("pairs", "add", "p2", "--left", "shop", "--right", "erp", "--entities", "widgets",
                            check=False)
    assert bad.returncode == 1 and "no shipped mapping for widgets" in bad.stderr
    same = await running.ctl("pairs", "add", "p3", "--left", "shop", "--right", "shop", check=False)
    assert same.returncode == 1
    assert [p["name"] for p in await running.ctl_json("pairs", "list")] == ["shop-erp"]
    assert await running.ctl_json("twoway", "runs") == []


async def test_dry_run_reports_the_plan_and_writes_nothing(
    nursery: trio.Nursery, tmp_path: Path, database_url: str, sides: Sides,
) -> None:
    running = await start_daemon(nursery, tmp_path, database_url, sides.config())
    before = (sides.shop.counts()["customers"], len(sides.erp.docs["res.partner"]))
    run = await run_to_end(running, "--dry-run")
    assert run["state"] == "done" and run["dry_run"] and run["writes"] == {"left": 0, "right": 0}
    plan = run["plan"]["customers"]
    assert plan["create_left"] == len(partners_with_email(sides.erp)) and plan["create_right"] == before[0]
    assert (sides.shop.counts()["customers"], len(sides.erp.docs["res.partner"])) == before
    assert query(database_url, "SELECT count(*) FROM links") == [(0,)]


async def test_refusals_become_conflicts_of_their_type_and_the_rest_of_the_batch_proceeds(
    nursery: trio.Nursery, tmp_path: Path, database_url: str, sides: Sides,
) -> None:
    # a shop customer Odoo refuses (a contact needs a name) ...
    sides.shop.create("customers", first_name="", last_name="", email="nameless@example.com",
                      billing={"first_name": "", "last_name": "", "email": "nameless@example.com"})
    # ... and a partner whose email a shop user outside the customer role already holds
    taken = next(iter(partners_with_email(sides.erp)))
    sides.shop.create("customers", email=taken, role="subscriber", first_name="Sub", last_name="Scriber")
    running = await start_daemon(nursery, tmp_path, database_url, sides.config())
    run = await run_to_end(running)
    assert run["state"] == "partial", json.dumps(run)
    conflicts = {c["type"]: c for c in await running.ctl_json("conflicts", "--pair", "shop-erp")}
    assert "Contacts require a name" in conflicts["ValidationError"]["message"]
    assert conflicts["ValidationError"]["left_id"] is not None and conflicts["ValidationError"]["right_id"] is None
    duplicate = conflicts["DuplicateKey"]
    assert duplicate["status"] in ("unresolved", "auto_resolved")  # linked to the holder when the shop names it
    # every other item of the batches went through, once
    emails = set(customers_by_email(sides.shop))
    assert set(partners_with_email(sides.erp)) == emails - {"nameless@example.com"} | {taken}
    assert run["queue"]["conflict"] >= 1 and run["queue"]["processed"] == run["queue"]["total"]


async def test_write_refused_for_credentials_is_an_auth_conflict_and_the_connection_needs_reauth(
    nursery: trio.Nursery, tmp_path: Path, database_url: str, sides: Sides,
) -> None:
    sides.shop.read_only_key = True  # reads work, writes are refused with 401
    partners = len(partners_with_email(sides.erp))
    running = await start_daemon(nursery, tmp_path, database_url, sides.config())
    run = await run_to_end(running)
    assert run["state"] == "partial", json.dumps(run)
    assert run["writes"]["left"] == 0 and run["conflicts"]["by_type"] == {"AuthError": partners}
    assert run["writes"]["right"] == 4  # the Odoo side's creates proceeded
    with trio.fail_after(10):
        while (await running.ctl_json("connections", "show", "shop"))["state"] != "reauth_required":
            await trio.sleep(0.1)


async def test_a_429_storm_on_writes_is_waited_out_and_persistent_5xx_ends_in_retry_exhausted(
    nursery: trio.Nursery, tmp_path: Path, database_url: str, sides: Sides,
) -> None:
    retry = '[policies.retry]\nattempts = 2\nbase = "0.05s"\ncap = "0.1s"\n'
    running = await start_daemon(nursery, tmp_path, database_url, sides.config() + retry)
    sides.shop.app.faults.configure({"status": 429, "count": 3, "retry_after": 1, "methods": ["POST", "PUT"]})
    started = trio.current_time()
    run = await run_to_end(running)
    assert run["state"] == "done", json.dumps(run)
    assert trio.current_time() - started >= 2.5  # Retry-After held three times
    assert sides.shop.counts()["customers"] == 8  # each created once

    customer = next(iter(customers_by_email(sides.shop).values()))
    await trio.sleep(1.1)
    sides.erp.write("res.partner", int(link_of(running, str(customer["id"]))[0]), phone="+1 555")
    sides.shop.app.faults.configure({"status": 503, "count": 1000, "methods": ["POST", "PUT"]})
    run = await run_to_end(running)
    sides.shop.app.faults.clear()
    assert run["state"] == "partial" and run["queue"]["failed"] == 1, json.dumps(run)
    assert run["conflicts"]["by_type"] == {"RetryExhausted": 1}
    items = query(database_url, "SELECT attempts FROM twoway_items WHERE run_id = %s", run["id"])
    assert items == [(3,)]


async def test_pause_resume_and_cancel_at_batch_boundaries(
    nursery: trio.Nursery, tmp_path: Path, database_url: str, sides: Sides,
) -> None:
    running = await start_daemon(nursery, tmp_path, database_url, sides.config())
    started = await running.ctl_json("twoway", "start", "shop-erp", "--batch-size", "1", "--batch-delay", "1")
    with trio.fail_after(30):
        while (await running.ctl_json("twoway", "status", str(started["id"])))["queue"]["processed"] < 1:
            await trio.sleep(0.05)
    await running.ctl_json("twoway", "pause", str(started["id"]))
    with trio.fail_after(30):
        while (paused := await running.ctl_json("twoway", "status", str(started["id"])))["state"] != "paused":
            await trio.sleep(0.05)
    assert 0 < paused["queue"]["processed"] < paused["queue"]["total"]
    await trio.sleep(1.5)
    assert (await running.ctl_json("twoway", "status", str(started["id"])))["queue"] == paused["queue"]
    await running.ctl_json("twoway", "resume", str(started["id"]))
    with trio.fail_after(30):
        while (await running.ctl_json("twoway", "status", str(started["id"])))["queue"]["processed"] \
                <= paused["queue"]["processed"]:
            await trio.sleep(0.05)
    cancelled = await running.ctl_json("twoway", "cancel", str(started["id"]))
    assert cancelled["requested"] == "cancel" or cancelled["state"] == "cancelled"
    with trio.fail_after(30):
        while (end := await running.ctl_json("twoway", "status", str(started["id"])))["state"] != "cancelled":
            await trio.sleep(0.05)
    assert end["queue"]["pending"] == 0 and end["queue"]["skipped"] > 0
    # nothing half-written: every create made is linked, every link's records exist
    links = query(database_url, "SELECT count(*) FROM links WHERE pair = 'shop-erp'")[0][0]
    assert links == end["writes"]["left"] + end["writes"]["right"]


async def test_a_shop_order_becomes_a_sale_order_with_its_partner_and_products_through_their_links(
    nursery: trio.Nursery, tmp_path: Path, database_url: str,
) -> None:
    shop = WooCommerceSimulator(records=3, seed=13, credentials=CREDS, orders=0, products=0)
    erp = OdooSimulator(records=3, seed=14, credentials=ODOO)
    shop_port = await nursery.start(functools.partial(serve_asgi, shop.app, host="127.0.0.1", port=0))
    erp_port = await nursery.start(functools.partial(serve_asgi, erp.app, host="127.0.0.1", port=0))
    sides = Sides(shop, erp, f"http://127.0.0.1:{shop_port}", f"http://127.0.0.1:{erp_port}")
    pair = '[pairs.shop-erp]\nleft = "shop"\nright = "erp"\nentities = ["customers", "products", "orders"]\n'
    running = await start_daemon(nursery, tmp_path, database_url, sides.config(pair=pair))
    assert (await run_to_end(running))["state"] == "done"  # customers linked, Odoo's products in the shop

    customer = next(iter(customers_by_email(shop).values()))
    partner_id, _ = link_of(running, str(customer["id"]))
    [(shop_product, erp_product)] = query(
        database_url, "SELECT left_id, right_id FROM links WHERE entity = 'products' ORDER BY left_id LIMIT 1")
    line = {"product_id": int(shop_product), "quantity": 2, "price": "5.00", "sku": "x", "name": "Thing"}
    order = shop.create("orders", customer_id=customer["id"], line_items=[{"id": 1, **line}])
    guest = shop.create("orders", customer_id=0, line_items=[{"id": 2, **line}])
    orders_before = set(erp.docs["sale.order"])
    run = await run_to_end(running)
    assert run["state"] == "partial" and run["writes"] == {"left": 0, "right": 1}, json.dumps(run)
    [created] = [erp.docs["sale.order"][i] for i in set(erp.docs["sale.order"]) - orders_before]
    assert created["origin"] == order["number"] and created["partner_id"][0] == int(partner_id)
    [line_id] = created["order_line"]
    sold = erp.docs["sale.order.line"][line_id]
    assert sold["product_id"][0] == int(erp_product) and sold["product_uom_qty"] == 2
    [refused] = await running.ctl_json("conflicts", "--type", "ValidationError")
    assert refused["left_id"] == str(guest["id"])  # a guest order has no partner: for a person to decide
    assert (await run_to_end(running))["writes"] == {"left": 0, "right": 0}  # orders are not compared after


async def test_a_web_backend_starts_a_run_follows_it_and_resolves_a_conflict_over_http(
    nursery: trio.Nursery, tmp_path: Path, database_url: str, sides: Sides,
) -> None:
    import httpx

    running = await start_daemon(nursery, tmp_path, database_url,
                                 '[http]\naddress = "127.0.0.1:0"\n' + sides.config())
    token = (await running.ctl("tokens", "add", "--tenant", "default")).stdout.strip()
    async with httpx.AsyncClient(base_url=f"{running.daemon.http_url}/api/v1", timeout=30,
                                 headers={"Authorization": f"Bearer {token}"}) as http:
        assert [p["name"] for p in (await http.get("/pairs")).json()] == ["shop-erp"]
        started = await http.post("/pairs/shop-erp/runs", json={"batch_size": 20})
        assert started.status_code == 202
        with trio.fail_after(60):
            while (run := (await http.get(f"/runs/{started.json()['id']}")).json())["state"] != "done":
                await trio.sleep(0.1)
        assert run["writes"]["right"] == 4
        customer = next(iter(customers_by_email(sides.shop).values()))
        partner_id, _ = link_of(running, str(customer["id"]))
        await trio.sleep(1.1)
        sides.shop.update("customers", customer["id"], billing={**customer["billing"], "postcode": "1000"})
        sides.erp.write("res.partner", int(partner_id), zip="9000")
        second = (await http.post("/pairs/shop-erp/runs")).json()
        with trio.fail_after(60):
            while (run := (await http.get(f"/runs/{second['id']}")).json())["state"] not in FINISHED:
                await trio.sleep(0.1)
        assert run["state"] == "partial", json.dumps(run)
        [conflict] = (await http.get("/conflicts", params={"unresolved": "true"})).json()
        bad = await http.post(f"/conflicts/{conflict['id']}/resolve", json={"take": "middle"})
        assert bad.status_code == 400
        resolved = await http.post(f"/conflicts/{conflict['id']}/resolve", json={"values": {"zip": "1050"}})
        assert resolved.status_code == 200 and resolved.json()["status"] == "resolved"
    assert sides.erp.docs["res.partner"][int(partner_id)]["zip"] == "1050"
    assert sides.shop.get("customers", customer["id"])["billing"]["postcode"] == "1050"


async def test_at_most_max_runs_per_tenant_process_at_once_the_rest_wait_queued(
    nursery: trio.Nursery, tmp_path: Path, database_url: str,
) -> None:
    blocks, names = [], []
    for n in range(3):
        shop = WooCommerceSimulator(records=3, seed=40 + n, credentials=CREDS)
        erp = OdooSimulator(records=3, seed=50 + n, credentials=ODOO)
        shop_port = await nursery.start(functools.partial(serve_asgi, shop.app, host="127.0.0.1", port=0))
        erp_port = await nursery.start(functools.partial(serve_asgi, erp.app, host="127.0.0.1", port=0))
        blocks.append(
            connection_block(f"shop{n}", f"http://127.0.0.1:{shop_port}")
            + f'[[connections]]\nname = "erp{n}"\nprovider = "odoo"\nbase_url = "http://127.0.0.1:{erp_port}"\n'
              f'credentials = {{ api_key = "{ODOO["api_key"]}" }}\n'
              f'options = {{ database = "{ODOO["database"]}", username = "{ODOO["username"]}" }}\n'
              f'[pairs.p{n}]\nleft = "shop{n}"\nright = "erp{n}"\nentities = ["customers"]\n')
        names.append(f"p{n}")
    running = await start_daemon(nursery, tmp_path, database_url,
                                 "[twoway]\nwrite_rate_per_minute = 50\nmax_runs_per_tenant = 2\n" + "".join(blocks))
    ids = [(await running.ctl_json("twoway", "start", name, "--batch-size", "1", "--batch-delay", "1"))["id"]
           for name in names]
    most = 0
    with trio.fail_after(90):
        while True:
            # one statement, one snapshot: three status calls in a row could see a run that finished
            # between them still processing beside the one that then started (a false 3 under load)
            states = [str(state) for (state,) in query(
                database_url, "SELECT state FROM twoway_runs WHERE id = ANY(%s) ORDER BY id", ids)]
            most = max(most, states.count("processing"))
            assert states.count("processing") <= 2, states
            if all(s in ("done", "partial") for s in states):
                break
            await trio.sleep(0.2)
    assert most == 2  # the cap was reached, and held
