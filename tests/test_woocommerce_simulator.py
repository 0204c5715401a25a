"""The WooCommerce simulator speaks the real protocol: a plain httpx client, no freshd code."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from datetime import datetime, timedelta

import httpx
import pytest
import trio
from oauthlib.oauth1 import (
    SIGNATURE_HMAC_SHA1,
    SIGNATURE_HMAC_SHA256,
    SIGNATURE_TYPE_AUTH_HEADER,
    SIGNATURE_TYPE_QUERY,
    Client,
)

from freshd.connectors.simulator import serve_asgi
from freshd.connectors.woocommerce.connector import OAuth1
from freshd.connectors.woocommerce.simulator import WooCommerceSimulator, php_parse

KEY, SECRET = "ck_sim", "cs_sim"


@pytest.fixture
async def sim(nursery: trio.Nursery) -> AsyncIterator[tuple[WooCommerceSimulator, str]]:
    simulator = WooCommerceSimulator(records=250, seed=11, credentials={"consumer_key": KEY, "consumer_secret": SECRET})
    port = await nursery.start(functools.partial(serve_asgi, simulator.app, "127.0.0.1", 0))
    yield simulator, f"http://127.0.0.1:{port}/wp-json/wc/v3"


async def test_pagination_headers_and_links(sim: tuple[WooCommerceSimulator, str]) -> None:
    _, base = sim
    async with httpx.AsyncClient(auth=(KEY, SECRET)) as client:
        r = await client.get(f"{base}/customers", params={"per_page": 100, "page": 2, "orderby": "id"})
    assert r.status_code == 200
    assert r.headers["x-wp-total"] == "250" and r.headers["x-wp-totalpages"] == "3"
    assert [c["id"] for c in r.json()] == list(range(101, 201))
    links = r.headers["link"]
    assert 'rel="next"' in links and 'rel="prev"' in links and "page=3" in links


async def test_a_listing_changed_between_two_pages_is_served_as_it_is_now_not_as_cached(
    sim: tuple[WooCommerceSimulator, str],
) -> None:
    """The simulator computes a listing's ids once per state of the table: a record created, changed
    or deleted between two pages must show in the next page, as WooCommerce's next query would."""
    simulator, base = sim
    async with httpx.AsyncClient(auth=(KEY, SECRET)) as client:
        async def ids(**params: object) -> tuple[list[int], str]:
            r = await client.get(f"{base}/customers", params={"per_page": 100, "orderby": "id", **params})
            return [c["id"] for c in r.json()], r.headers["x-wp-total"]

        assert (await ids(page=1))[1] == "250"
        simulator.delete("customers", 5)
        first, total = await ids(page=1)
        assert total == "249" and 5 not in first and first[4] == 6
        created = simulator.create("customers", first_name="Aaron", last_name="Aardvark", role="customer")
        assert (await ids(page=3))[0][-1] == created["id"]
        simulator.update("customers", 7, role="subscriber")  # no longer listed under the default role
        assert 7 not in (await ids(page=1))[0]
        assert 7 in (await ids(page=1, role="all"))[0]


async def test_per_page_over_100_is_rest_invalid_param(sim: tuple[WooCommerceSimulator, str]) -> None:
    _, base = sim
    async with httpx.AsyncClient(auth=(KEY, SECRET)) as client:
        r = await client.get(f"{base}/orders", params={"per_page": 101})
    body = r.json()
    assert r.status_code == 400 and body["code"] == "rest_invalid_param"
    assert body["data"]["status"] == 400 and "per_page" in body["data"]["params"]


async def test_auth_variants(sim: tuple[WooCommerceSimulator, str]) -> None:
    _, base = sim
    async with httpx.AsyncClient() as client:
        anonymous = await client.get(f"{base}/products")
        assert anonymous.status_code == 401 and anonymous.json()["code"] == "woocommerce_rest_cannot_view"
        wrong = await client.get(f"{base}/products", auth=("ck_nope", SECRET))
        assert wrong.json()["message"] == "Consumer key is invalid."
        query = await client.get(f"{base}/products", params={"consumer_key": KEY, "consumer_secret": SECRET})
        assert query.status_code == 200
        signed = await client.get(f"{base}/products", params={"per_page": 5}, auth=OAuth1(KEY, SECRET))
        assert signed.status_code == 200 and len(signed.json()) == 5
        bad_sig = await client.get(f"{base}/products", auth=OAuth1(KEY, "cs_wrong"))
        assert bad_sig.json()["message"] == "Invalid signature - provided signature does not match."
        # replaying a signed URL reuses its nonce
        replay = await client.get(signed.request.url)
        assert replay.status_code == 401 and "nonce" in replay.json()["message"]


async def test_modified_after_gmt_and_local_time(sim: tuple[WooCommerceSimulator, str]) -> None:
    simulator, base = sim
    changed = simulator.update("orders", 42, customer_note="x")
    moment = datetime.fromisoformat(changed["date_modified_gmt"])
    one_hour_later = (moment + timedelta(hours=1)).isoformat()
    params = {"modified_after": one_hour_later, "orderby": "modified", "order": "asc"}
    async with httpx.AsyncClient(auth=(KEY, SECRET)) as client:
        gmt = await client.get(f"{base}/orders", params={**params, "dates_are_gmt": "true"})
        local = await client.get(f"{base}/orders", params=params)
    # read as GMT, an hour after the change excludes it; read as site time (UTC+2) it is an hour before
    assert 42 not in [o["id"] for o in gmt.json()]
    assert 42 in [o["id"] for o in local.json()]


async def test_fields_include_and_errors(sim: tuple[WooCommerceSimulator, str]) -> None:
    _, base = sim
    async with httpx.AsyncClient(auth=(KEY, SECRET)) as client:
        light = await client.get(f"{base}/customers", params={"_fields": "id,date_modified_gmt", "per_page": 3})
        assert all(set(c) == {"id", "date_modified_gmt"} for c in light.json())
        picked = await client.get(f"{base}/customers", params={"include": "9,3,5", "orderby": "include"})
        assert [c["id"] for c in picked.json()] == [9, 3, 5]
        missing = await client.get(f"{base}/customers/99999")
        assert missing.status_code == 404 and missing.json()["message"] == "Invalid ID."
        no_route = await client.get(f"{base}/nothing-here")
        assert no_route.status_code == 404 and no_route.json()["code"] == "rest_no_route"
        too_many = await client.post(f"{base}/products/batch", json={"create": [{"name": "x"}] * 101})
        assert too_many.status_code == 413
        assert too_many.json()["code"] == "woocommerce_rest_request_entity_too_large"


async def test_faults_429_with_retry_after_then_recovery(sim: tuple[WooCommerceSimulator, str]) -> None:
    _, base = sim
    root = base.split("/wp-json")[0]
    async with httpx.AsyncClient(auth=(KEY, SECRET)) as client:
        await client.post(f"{root}/_sim/faults", json={"status": 429, "count": 2, "retry_after": 3})
        first = await client.get(f"{base}/products")
        second = await client.get(f"{base}/products")
        third = await client.get(f"{base}/products")
        await client.post(f"{root}/_sim/faults", json={"malformed": 1})
        garbled = await client.get(f"{base}/products")
    assert [first.status_code, second.status_code, third.status_code] == [429, 429, 200]
    assert first.headers["retry-after"] == "3"
    with pytest.raises(ValueError):
        garbled.json()


def test_query_is_read_as_php_reads_it() -> None:
    pairs = [("per_page", "5"), ("per_page", "7"), ("status[]", "a"), ("status[]", "b"), ("meta[k]", "v"),
             ("meta[n][]", "x"), ("a.b c", "1"), (" lead", "2"), ("open[x", "3"), ("", "dropped"),
             ("[noname]", "dropped"), ("k[s]tail", "4"), ("flag", "")]
    assert php_parse(pairs) == {
        "per_page": "7",  # a repeated key keeps its last value
        "status": {"0": "a", "1": "b"},
        "meta": {"k": "v", "n": {"0": "x"}},
        "a_b_c": "1", "lead": "2", "open_x": "3",  # dots, spaces and an unclosed '[' become '_'
        "k": {"s": "4"}, "flag": "",
    }
    assert php_parse([("i[3]", "a"), ("i[]", "b"), ("s", "x"), ("s[]", "y")]) == {
        "i": {"3": "a", "4": "b"}, "s": {"0": "y"}}
    assert len(php_parse((f"k{n}", "v") for n in range(1500))) == 1000  # max_input_vars


def test_signature_base_string_follows_woocommerce_check() -> None:
    sim = WooCommerceSimulator(records=1)
    params = php_parse([("b", "x y"), ("a[]", "1/2"), ("a[]", "3"), ("oauth_nonce", "n"), ("b", "last"),
                        ("oauth_signature", "ignored")])
    base = sim.signature_base_string("get", "http://shop.example/wp-json/wc/v3/orders", params)
    assert base == ("GET&http%3A%2F%2Fshop.example%2Fwp-json%2Fwc%2Fv3%2Forders&"
                    "a%255B0%255D%3D1%252F2%26a%255B1%255D%3D3%26b%3Dlast%26oauth_nonce%3Dn")


@pytest.mark.parametrize("method", [SIGNATURE_HMAC_SHA1, SIGNATURE_HMAC_SHA256])
@pytest.mark.parametrize("placement", [SIGNATURE_TYPE_QUERY, SIGNATURE_TYPE_AUTH_HEADER])
async def test_oauthlib_signed_requests_are_accepted_and_tampered_ones_refused(
        sim: tuple[WooCommerceSimulator, str], method: str, placement: str) -> None:
    _, base = sim
    signer = Client(KEY, client_secret=SECRET, signature_method=method, signature_type=placement)
    async with httpx.AsyncClient() as client:
        url, headers, _ = signer.sign(f"{base}/customers?per_page=3&orderby=id&order=asc")
        accepted = await client.get(url, headers=headers)
        assert accepted.status_code == 200, accepted.text
        assert [c["id"] for c in accepted.json()] == [1, 2, 3]
        url, headers, _ = signer.sign(f"{base}/customers?per_page=3")
        tampered = await client.get(url.replace("per_page=3", "per_page=4"), headers=headers)
        assert tampered.status_code == 401
        assert tampered.json()["message"] == "Invalid signature - provided signature does not match."
        # RFC 5849 signs both copies of a repeated key; WooCommerce signs the last one only
        url, headers, _ = signer.sign(f"{base}/customers?per_page=3&per_page=4")
        both = await client.get(url, headers=headers)
        assert both.status_code == 401


async def test_partial_oauth_parameters_name_what_is_missing(sim: tuple[WooCommerceSimulator, str]) -> None:
    _, base = sim
    async with httpx.AsyncClient() as client:
        r = await client.get(f"{base}/customers", params={"oauth_consumer_key": KEY, "oauth_nonce": "n"})
    assert r.status_code == 401
    assert r.json() == {"code": "woocommerce_rest_authentication_missing_parameter",
                        "message": "Missing OAuth parameters oauth_timestamp, oauth_signature, "
                                   "oauth_signature_method", "data": {"status": 401}}
