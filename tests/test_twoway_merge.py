"""The two-way mapping, merge and plan, without I/O; and the [twoway]/[pairs] configuration."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from freshd.config import load_config
from freshd.errors import ConfigError
from freshd.store.twoway import Link
from freshd.twoway.declarations import build_pair
from freshd.twoway.mapping import Rule, Side
from freshd.twoway.merge import merge
from freshd.twoway.plan import plan_entity

STREAMS = (frozenset({"customers", "orders", "products"}), frozenset({"partners", "sale_orders", "products"}))
TABLES: Any = {"countries": {"75": "FR", "21": "BE"}}


def pair(spec: dict[str, Any]) -> Any:
    return build_pair("p", "shop", "erp", {"entities": spec}, providers=("woocommerce", "odoo"), streams=STREAMS)


CUSTOMERS = pair({"customers": {}}).entities["customers"]


def woo(cid: int, first: str, last: str, **billing: Any) -> dict[str, Any]:
    return {"id": cid, "email": f"{first}@x.example".upper(), "first_name": first, "last_name": last,
            "date_modified_gmt": billing.pop("modified", "2026-01-01T00:00:00"),
            "billing": {"phone": "", "address_1": "1 Main St", "city": "Lyon", "postcode": "69001",
                        "country": "FR", **billing}}


def odoo(pid: int, name: str, email: str, **more: Any) -> dict[str, Any]:
    return {"id": pid, "name": name, "email": email, "phone": False, "street": "1 Main St", "city": "Lyon",
            "zip": "69001", "country_id": [75, "France"], "write_date": more.pop("modified", "2026-01-01 00:00:00"),
            **more}


def test_the_shipped_customer_mapping_reads_both_sides_into_the_same_common_values() -> None:
    left = CUSTOMERS.common(Side.LEFT, woo(1, "Ann", "Lee"), TABLES)
    right = CUSTOMERS.common(Side.RIGHT, odoo(7, "Ann Lee", "ann@x.example"), TABLES)
    assert left == right == {"email": "ann@x.example", "name": "Ann Lee", "phone": None, "street": "1 Main St",
                             "city": "Lyon", "zip": "69001", "country": "FR"}


def test_writing_common_values_gives_each_provider_its_own_shape() -> None:
    values = {"name": "Ann van Lee", "country": "BE", "phone": None, "city": "Ghent"}
    assert CUSTOMERS.fragment(Side.LEFT, values, TABLES) == {
        "first_name": "Ann", "last_name": "van Lee", "billing": {"country": "BE", "phone": "", "city": "Ghent"}}
    assert CUSTOMERS.fragment(Side.RIGHT, values, TABLES) == {"name": "Ann van Lee", "country_id": 21,
                                                              "phone": False, "city": "Ghent"}


def test_a_country_the_other_side_does_not_know_is_refused_not_guessed() -> None:
    with pytest.raises(ValueError, match="no country with code 'ZZ'"):
        CUSTOMERS.fragment(Side.RIGHT, {"country": "ZZ"}, TABLES)


def test_money_compares_as_cents_and_is_written_as_each_side_wants() -> None:
    products = pair({"products": {}}).entities["products"]
    assert products.common(Side.LEFT, {"regular_price": "12.5"}, {})["price"] == "12.50"
    assert products.common(Side.RIGHT, {"list_price": 12.5}, {})["price"] == "12.50"
    assert products.fragment(Side.RIGHT, {"price": "12.50"}, {}) == {"list_price": 12.5}
    assert products.fragment(Side.LEFT, {"price": "12.50"}, {}) == {"regular_price": "12.50"}


BASE = {"name": "Ann Lee", "city": "Lyon", "phone": None}


def test_a_change_on_one_side_goes_to_the_other_and_both_sides_agreeing_writes_nothing() -> None:
    decision = merge(CUSTOMERS, BASE, {**BASE, "city": "Paris"}, {**BASE, "phone": "+33 1"})
    assert decision.to_right == {"city": "Paris"} and decision.to_left == {"phone": "+33 1"}
    assert decision.base["city"] == "Paris" and decision.base["phone"] == "+33 1" and not decision.mismatches
    same = merge(CUSTOMERS, BASE, {**BASE, "city": "Nice"}, {**BASE, "city": "Nice"})
    assert not same.writes and same.base["city"] == "Nice"


def test_the_same_field_changed_to_different_values_is_a_mismatch_the_manual_rule_leaves_alone() -> None:
    decision = merge(CUSTOMERS, BASE, {**BASE, "city": "Ghent"}, {**BASE, "city": "Bruges"})
    assert not decision.writes
    [mismatch] = decision.mismatches
    assert (mismatch.field, mismatch.base, mismatch.left, mismatch.right) == ("city", "Lyon", "Ghent", "Bruges")
    assert decision.base["city"] == "Lyon"  # still the last agreement


@pytest.mark.parametrize(("rule", "left_time", "expect"), [
    ("prefer_left", None, "left"), ("prefer_right", None, "right"),
    ("newest", "2026-01-02T00:00:00", "left"), ("newest", "2025-12-31T00:00:00", "right"),
])
def test_rules_settle_a_mismatch(rule: str, left_time: str | None, expect: str) -> None:
    entity = pair({"customers": {"rule": rule}}).entities["customers"]
    right_time = datetime(2026, 1, 1, tzinfo=UTC)
    decision = merge(entity, BASE, {**BASE, "city": "Ghent"}, {**BASE, "city": "Bruges"},
                     left_modified=datetime.fromisoformat(left_time).replace(tzinfo=UTC) if left_time else None,
                     right_modified=right_time)
    assert not decision.mismatches and decision.settled[0][1] is Rule(rule)
    assert (decision.to_right if expect == "left" else decision.to_left) == {
        "city": "Ghent" if expect == "left" else "Bruges"}


def test_newest_without_both_times_falls_back_to_a_person() -> None:
    entity = pair({"customers": {"rule": "newest"}}).entities["customers"]
    decision = merge(entity, BASE, {**BASE, "city": "Ghent"}, {**BASE, "city": "Bruges"})
    assert len(decision.mismatches) == 1


def test_a_per_field_rule_overrides_the_entitys() -> None:
    entity = pair({"customers": {"rules": {"city": "prefer_right"}}}).entities["customers"]
    decision = merge(entity, BASE, {**BASE, "city": "Ghent", "phone": "1"}, {**BASE, "city": "Bruges", "phone": "2"})
    assert decision.to_left == {"city": "Bruges"} and [m.field for m in decision.mismatches] == ["phone"]


def test_a_one_way_entity_copies_its_source_whatever_the_base_says() -> None:
    products = pair({"products": {}}).entities["products"]
    decision = merge(products, {"name": "A"}, {"name": "B"}, {"name": "A"})
    assert decision.to_left == {"name": "A"} and not decision.to_right


def test_plan_links_by_natural_key_creates_the_rest_and_reports_duplicates_never_linking_twice() -> None:
    left = {"1": woo(1, "Ann", "Lee"), "2": woo(2, "bob", "Ray"), "3": woo(3, "dup", "A"), "4": woo(4, "dup", "B")}
    right = {"7": odoo(7, "Ann Lee", "ann@x.example"), "8": odoo(8, "Cid", "cid@x.example"),
             "9": odoo(9, "Dup", "dup@x.example"), "10": odoo(10, "No Email", False)}
    plan = plan_entity(CUSTOMERS, left, right, [], (TABLES, TABLES))
    assert plan.natural_links == [("1", "7")]
    assert ("2", None) in plan.items and (None, "8") in plan.items
    assert len(plan.duplicates) == 1 and "held by 2 left and 1 right" in plan.duplicates[0][2]
    assert plan.counts["without_key"] == 1  # the partner without an email takes no part
    again = plan_entity(CUSTOMERS, left, right, [Link("1", "7", CUSTOMERS.common(Side.LEFT, left["1"], TABLES))],
                        (TABLES, TABLES))
    assert ("1", "7") not in again.items and again.counts["unchanged"] == 1


def test_a_bad_mapping_is_refused_whole_with_every_problem_named() -> None:
    with pytest.raises(ConfigError) as caught:
        pair({"customers": {"rule": "loudest", "key": "nope", "fields": {"x": {"left": "a", "right": "b",
                                                                               "transform": "rot13"}}},
              "widgets": {}})
    text = str(caught.value)
    for fragment in ("pairs.p.customers.rule: must be one of manual", "unknown transform 'rot13'",
                     "natural key must be one of the mapped fields", "no shipped mapping for widgets"):
        assert fragment in text


def test_twoway_and_pairs_config_are_checked(tmp_path: Path) -> None:
    path = tmp_path / "f.toml"
    path.write_text('[twoway]\nbatch_size = 500\nwrite_rate_per_minute = 80\n'
                    '[pairs.shop-erp]\nleft = "shop"\n')
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})
    text = str(caught.value)
    assert "batch_size: must be at most 200" in text and "write_rate_per_minute: must be above 0 and at most 50" \
        in text and "missing required key 'right'" in text
    path.write_text('[pairs.shop-erp]\nleft = "shop"\nright = "erp"\n[pairs.shop-erp.customers]\nrule = "newest"\n')
    config = load_config(path, env={})
    assert config.pairs[0].spec == {"entities": {"customers": {"rule": "newest"}}}


def test_a_pairs_connections_are_assigned_to_one_member_and_the_split_stays_bounded() -> None:
    from freshd.cluster import assign

    members = ["a", "b", "c"]
    ids = list(range(1, 31))
    together = {3: 3, 17: 3, 5: 5, 6: 5, 29: 5}  # two pairs sharing nothing; one of them a chain of three
    split = assign(ids, members, together)
    assert split[3] == split[17] and split[5] == split[6] == split[29]
    loads = {m: sum(1 for owner in split.values() if owner == m) for m in members}
    assert max(loads.values()) <= 10 + 2  # ceil(30 / 3), exceeded by less than a group at most
    assert assign(ids, members, together) == split  # every member computes the same split


async def test_a_write_whose_lease_moved_is_refused_before_anything_reaches_the_provider(database_url: str) -> None:
    """Scale-out: the intent's transaction checks the target connection's lease epoch first."""
    from collections.abc import Awaitable, Callable

    from freshd.connectors.writes import Update
    from freshd.errors import Fenced
    from freshd.policies.ratelimit import Rate, TokenBucket
    from freshd.store import connections, open_store
    from freshd.store import twoway as db
    from freshd.store.db import Fence
    from freshd.twoway.mapping import Side as S
    from freshd.twoway.writepath import PlannedWrite, WritePath

    async with open_store(database_url) as store:
        rows = []
        for name, provider in (("shop", "woocommerce"), ("erp", "odoo")):
            row, _ = await store.call(connections.upsert_connection, store.keyring, name=name, tenant="t",
                                      provider=provider, base_url="http://127.0.0.1:9", options={},
                                      credentials={"k": "v"}, source="admin")
            rows.append(row)
        pair = await store.call(db.upsert_pair, name="p", tenant="t", left_id=rows[0].id, right_id=rows[1].id,
                                spec={"entities": {"customers": {}}}, source="admin")
        calls: list[str] = []

        class Gateway:
            def __init__(self) -> None:
                self.store = store

            def fence(self, connection: str) -> Fence:
                return Fence(rows[1].id, "gone-member", 99)  # no such lease: another member took it

            async def with_connector(self, connection: str, call: Callable[[Any], Awaitable[Any]]) -> Any:
                calls.append(connection)
                raise AssertionError("nothing may reach the provider")

        path = WritePath(Gateway(), TokenBucket(Rate(100.0, 100.0)))  # type: ignore[arg-type]
        write = PlannedWrite("u_test", S.RIGHT, Update("7", {"city": "Ghent"}), {"city": "Ghent"}, "1")
        with pytest.raises(Fenced):
            await path.apply(pair, CUSTOMERS, S.RIGHT, [write], None)
        assert calls == []
        assert await store.call(db.write_log, pair="p") == []  # the intent was not committed either
