"""Each simulator driven by its provider's well-known public client library, unchanged.

The libraries (the `clients` extra in pyproject.toml, pinned in constraints.txt) are blocking,
so every call runs in `trio.to_thread.run_sync` against a simulator served on loopback.  A
simulator that one of them cannot talk to is a simulator bug: real servers accept them.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import pytest
import trio
from woocommerce import API as WooCommerceAPI

from freshd.connectors.simulator import serve_asgi
from freshd.connectors.woocommerce.simulator import WooCommerceSimulator

T = TypeVar("T")


async def blocking(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run one blocking client call off the trio loop (the simulator serves on it)."""
    return await trio.to_thread.run_sync(functools.partial(fn, *args, **kwargs))


# --- WooCommerce: `woocommerce` (the official Python client) ------------------------------------------

WC_KEY, WC_SECRET = "ck_public_client", "cs_public_client"


@pytest.fixture
async def woo(nursery: trio.Nursery) -> AsyncIterator[tuple[WooCommerceSimulator, WooCommerceAPI]]:
    sim = WooCommerceSimulator(records=60, seed=5, credentials={"consumer_key": WC_KEY, "consumer_secret": WC_SECRET})
    port = await nursery.start(functools.partial(serve_asgi, sim.app, "127.0.0.1", 0))
    # plain HTTP: the client signs every request with OAuth 1.0a (HMAC-SHA256)
    api = WooCommerceAPI(url=f"http://127.0.0.1:{port}", consumer_key=WC_KEY, consumer_secret=WC_SECRET,
                         version="wc/v3", timeout=10)
    yield sim, api


async def test_official_woocommerce_client_lists_customers_over_oauth1(
        woo: tuple[WooCommerceSimulator, WooCommerceAPI]) -> None:
    sim, api = woo
    with trio.fail_after(30):
        first = await blocking(api.get, "customers", params={"per_page": 25, "orderby": "id", "order": "asc"})
        assert first.status_code == 200, first.text
        # the client puts its parameters in the signed URL and sends them again: PHP keeps one of each
        assert str(first.request.url).count("per_page=25") == 2
        pages = int(first.headers["x-wp-totalpages"])
        seen = [c["id"] for c in first.json()]
        for page in range(2, pages + 1):
            r = await blocking(api.get, "customers",
                               params={"per_page": 25, "orderby": "id", "order": "asc", "page": page})
            assert r.status_code == 200, r.text
            seen += [c["id"] for c in r.json()]
    assert first.headers["x-wp-total"] == "60" and pages == 3
    assert seen == sorted(sim.collections["customers"].by_id)  # every customer once, in order
    # the Link header names each parameter once (WordPress rebuilds it from $_GET)
    links = first.headers["link"].split(", ")
    assert 'rel="next"' in first.headers["link"] and all(link.count("per_page=25") == 1 for link in links)


async def test_official_woocommerce_client_filters_with_php_arrays(
        woo: tuple[WooCommerceSimulator, WooCommerceAPI]) -> None:
    sim, api = woo
    wanted = ["processing", "completed"]
    with trio.fail_after(30):
        # status[0]=…&status[1]=…: PHP builds an array, signed as status%5B0%5D=…
        r = await blocking(api.get, "orders", params={"status[0]": wanted[0], "status[1]": wanted[1],
                                                      "per_page": 100})
        modified = await blocking(api.get, "orders", params={"modified_after": "2000-01-01T00:00:00",
                                                             "dates_are_gmt": "true", "_fields": "id,status"})
    assert r.status_code == 200, r.text
    expected = {rid for rid, status in sim.collections["orders"].statuses.items() if status in wanted}
    assert {o["id"] for o in r.json()} == expected and expected
    assert modified.status_code == 200, modified.text
    assert all(set(o) == {"id", "status"} for o in modified.json())


async def test_official_woocommerce_client_writes_over_oauth1(
        woo: tuple[WooCommerceSimulator, WooCommerceAPI]) -> None:
    sim, api = woo
    with trio.fail_after(30):
        created = await blocking(api.post, "customers", {"email": "new.client@example.com", "first_name": "Ada"})
        assert created.status_code == 201, created.text
        cid = created.json()["id"]
        updated = await blocking(api.put, f"customers/{cid}", {"first_name": "Grace"})
        deleted = await blocking(api.delete, f"customers/{cid}", params={"force": True})
        wrong = WooCommerceAPI(url=api.url, consumer_key=WC_KEY, consumer_secret="cs_wrong", version="wc/v3")
        refused = await blocking(wrong.get, "customers", params={"per_page": 5})
    assert updated.status_code == 200 and updated.json()["first_name"] == "Grace"
    assert deleted.status_code == 200 and cid not in sim.collections["customers"].docs
    assert refused.status_code == 401
    assert refused.json()["message"] == "Invalid signature - provided signature does not match."
