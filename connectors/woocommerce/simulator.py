"""A WooCommerce REST API v3 simulator: `/wp-json/wc/v3` customers, orders, products.

Faithful to what a client sees (API_FACTS §2): Basic auth, query-string keys
and OAuth 1.0a one-legged signing (HMAC-SHA1/SHA256, 15-minute timestamp
window, nonces remembered); `page`/`per_page` (1..100) and `offset` paging with
`X-WP-Total`, `X-WP-TotalPages` and `Link`; `orderby`/`order`; `include`/
`exclude`/`search`; `modified_after`/`modified_before`/`after`/`before` with
`dates_are_gmt` (orders, products; the site runs at UTC+02:00 so local and GMT
differ); `status` (orders) and `role` (customers); WordPress' `_fields`;
single-record GET/PUT/DELETE, create and batch (100 items); and errors as
`{"code", "message", "data": {"status"}}`.

Known deviations: plain HTTP accepts Basic and query keys (the real API
accepts those over HTTPS only); `search` matches names and emails only.

Records are kept as serialized JSON plus small sort indexes, so 100,000
customers cost ~1.3 KB each and a list page is a join of cached bytes.
"""

from __future__ import annotations

import base64
import bisect
import hashlib
import hmac
import math
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson

from freshd.connectors.simulator import FakeData, Request, Response, SimulatorApp, random_churn

PREFIX = "/wp-json/wc/v3"
SITE_TZ = timezone(timedelta(hours=2))
RESOURCES = ("customers", "orders", "products")
ORDER_STATUSES = ("pending", "processing", "on-hold", "completed", "cancelled", "refunded", "failed")
OAUTH_WINDOW = 15 * 60
BATCH_LIMIT = 100


def error(status: int, code: str, message: str, **data: Any) -> Response:
    return Response.json({"code": code, "message": message, "data": {"status": status, **data}}, status)


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, **data: Any) -> None:
        self.response = error(status, code, message, **data)


def _fmt(moment: datetime) -> str:
    return moment.replace(tzinfo=None, microsecond=0).isoformat()


def _parse_date(value: str, *, gmt: bool, name: str) -> datetime:
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ApiError(400, "rest_invalid_param", f"Invalid parameter(s): {name}",
                       params={name: f"Invalid date: {value}"}) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC if gmt else SITE_TZ)
    return moment.astimezone(UTC)


def _pct(value: str) -> str:
    return urllib.parse.quote(value, safe="~-._")


@dataclass
class _Collection:
    name: str
    docs: dict[int, bytes] = field(default_factory=dict)  # id -> JSON
    modified: dict[int, str] = field(default_factory=dict)  # id -> date_modified_gmt
    by_id: list[int] = field(default_factory=list)  # ascending
    by_modified: list[tuple[str, int]] = field(default_factory=list)  # ascending (date_modified_gmt, id)
    sort_names: dict[int, str] = field(default_factory=dict)
    statuses: dict[int, str] = field(default_factory=dict)
    next_id: int = 1

    def put(self, record: dict[str, Any]) -> None:
        rid = int(record["id"])
        if rid in self.docs:
            self.by_modified.remove((self.modified[rid], rid))
        else:
            bisect.insort(self.by_id, rid)
        self.docs[rid] = orjson.dumps(record)
        self.modified[rid] = record["date_modified_gmt"]
        bisect.insort(self.by_modified, (record["date_modified_gmt"], rid))
        self.sort_names[rid] = str(record.get("last_name") or record.get("name") or "").lower()
        self.statuses[rid] = str(record.get("status", ""))
        self.next_id = max(self.next_id, rid + 1)

    def remove(self, rid: int) -> None:
        self.by_modified.remove((self.modified.pop(rid), rid))
        self.by_id.remove(rid)
        del self.docs[rid]
        self.sort_names.pop(rid, None)
        self.statuses.pop(rid, None)

    def get(self, rid: int) -> dict[str, Any]:
        return orjson.loads(self.docs[rid])  # type: ignore[no-any-return]


class WooCommerceSimulator:
    def __init__(
        self,
        records: int = 100,
        seed: int = 1,
        credentials: dict[str, str] | None = None,
        *,
        customers: int | None = None,
        orders: int | None = None,
        products: int | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        creds = credentials or {}
        self.consumer_key = creds.get("consumer_key", "ck_demo")
        self.consumer_secret = creds.get("consumer_secret", "cs_demo")
        self.clock = clock or (lambda: datetime.now(UTC))
        self.fake = FakeData(seed)
        self.collections = {name: _Collection(name) for name in RESOURCES}
        self._nonces: dict[str, float] = {}
        counts = {"customers": records if customers is None else customers,
                  "orders": records if orders is None else orders,
                  "products": max(records // 10, 1) if products is None else products}
        self._seed(counts)
        self.app = SimulatorApp(error)
        for resource in RESOURCES:
            base = f"{PREFIX}/{resource}"
            self.app.route("GET", base, self._list)
            self.app.route("POST", base, self._create)
            self.app.route("POST", base + "/batch", self._batch)
            self.app.route("GET", base + "/{id}", self._read)
            self.app.route("PUT", base + "/{id}", self._update)
            self.app.route("DELETE", base + "/{id}", self._delete)
        self.app.route("POST", "/_sim/mutate", self._mutate_endpoint)
        self.app.route("GET", "/_sim/state", self._state_endpoint)

    # --- data ------------------------------------------------------------------------------------

    def _seed(self, counts: dict[str, int]) -> None:
        now = self.clock().replace(microsecond=0)
        start = now - timedelta(days=365)
        for resource, count in counts.items():
            step = timedelta(days=300) / max(count, 1)
            for i in range(count):
                created = start + step * i
                modified = created + timedelta(seconds=self.fake.rng.randint(0, 5 * 86400))
                self.collections[resource].put(self._make(resource, i + 1, created, min(modified, now)))

    def _dates(self, prefix: str, moment: datetime) -> dict[str, str]:
        return {prefix: _fmt(moment.astimezone(SITE_TZ)), f"{prefix}_gmt": _fmt(moment)}

    def _make(self, resource: str, rid: int, created: datetime, modified: datetime) -> dict[str, Any]:
        fake = self.fake
        dates = {**self._dates("date_created", created), **self._dates("date_modified", modified)}
        if resource == "customers":
            first, last = fake.person()
            email = f"{first}.{last}.{rid}@example.com".lower()
            return {"id": rid, **dates, "email": email, "first_name": first, "last_name": last,
                    "role": "customer", "username": f"{first}{rid}".lower(),
                    "billing": fake.address(first, last, email),
                    "shipping": {k: v for k, v in fake.address(first, last, email).items()
                                 if k not in ("email", "phone")},
                    "is_paying_customer": fake.rng.random() < 0.6, "avatar_url": "https://secure.gravatar.com/avatar/",
                    "meta_data": []}
        if resource == "orders":
            first, last = fake.person()
            email = f"{first}.{last}@example.com".lower()
            qty = fake.rng.randint(1, 3)
            price = fake.price()
            total = f"{float(price) * qty:.2f}"
            return {"id": rid, "parent_id": 0, "number": str(rid), "order_key": f"wc_order_{rid:08x}",
                    "created_via": "checkout", "version": "8.9.1",
                    "status": fake.rng.choice(ORDER_STATUSES), "currency": "EUR", **dates,
                    "discount_total": "0.00", "shipping_total": "0.00", "total": total, "total_tax": "0.00",
                    "customer_id": fake.rng.randint(0, 50), "billing": fake.address(first, last, email),
                    "payment_method": "stripe", "payment_method_title": "Credit card",
                    "line_items": [{"id": rid * 10, "name": fake.product_name(), "product_id": fake.rng.randint(1, 50),
                                    "quantity": qty, "sku": f"SKU-{fake.rng.randint(1000, 9999)}", "price": price,
                                    "total": total}]}
        name = fake.product_name()
        return {"id": rid, "name": f"{name} {rid}", "slug": f"{name.lower().replace(' ', '-')}-{rid}", **dates,
                "type": "simple", "status": "publish", "featured": False, "sku": f"SKU-{rid:05d}",
                "price": fake.price(), "regular_price": fake.price(), "manage_stock": True,
                "stock_quantity": fake.rng.randint(0, 500), "stock_status": "instock"}

    def _now(self) -> datetime:
        return self.clock().astimezone(UTC).replace(microsecond=0)

    def counts(self) -> dict[str, int]:
        return {name: len(c.docs) for name, c in self.collections.items()}

    def get(self, resource: str, rid: int) -> dict[str, Any]:
        return self.collections[resource].get(rid)

    def create(self, resource: str, **fields: Any) -> dict[str, Any]:
        coll = self.collections[resource]
        now = self._now()
        record = {**self._make(resource, coll.next_id, now, now), **fields}
        coll.put(record)
        return record

    def update(self, resource: str, rid: int, **fields: Any) -> dict[str, Any]:
        coll = self.collections[resource]
        record = {**coll.get(rid), **fields, **self._dates("date_modified", self._now())}
        coll.put(record)
        return record

    def delete(self, resource: str, rid: int, *, force: bool = False) -> dict[str, Any]:
        """Customers are removed; orders and products go to the trash unless forced."""
        record = self.collections[resource].get(rid)
        if force or resource == "customers":
            self.collections[resource].remove(rid)
            return record
        return self.update(resource, rid, status="trash")

    # --- the test contract (tests/rig.py SimulatorUnderTest) -------------------------------------

    token_requests = 0  # API keys: no token endpoint

    def count(self, entity: str) -> int:
        """Live records a complete sync ends with (trashed orders/products are tombstones)."""
        coll = self.collections[entity]
        return sum(1 for rid in coll.by_id if coll.statuses.get(rid) != "trash")

    def mutate(self, entity: str) -> dict[str, str | None]:
        """One create, one update, one delete (customers are removed, the others trashed)."""
        coll = self.collections[entity]
        live = [rid for rid in coll.by_id if coll.statuses.get(rid) != "trash"]
        updated, deleted = live[0], live[-1]
        field = {"customers": "first_name", "orders": "customer_note", "products": "short_description"}[entity]
        self.update(entity, updated, **{field: f"changed {self._now().isoformat()}"})
        self.delete(entity, deleted)
        created = self.create(entity)
        return {"created": str(created["id"]), "updated": str(updated), "deleted": str(deleted)}

    def corrupt(self, entity: str) -> str:
        coll = self.collections[entity]
        rid = coll.by_id[len(coll.by_id) // 2]
        field = {"customers": "last_name", "orders": "customer_note", "products": "name"}[entity]
        self.update(entity, rid, **{field: "bad\u0000byte"})
        return str(rid)

    def random_changes(self, count: int) -> dict[str, int]:
        """Apply `count` random creates, updates and deletes (deterministic for the seed)."""
        rng = self.fake.rng

        def update(resource: str, rid: int) -> None:
            if resource == "customers":
                self.update(resource, rid, first_name=self.fake.person()[0])
            elif resource == "orders":
                self.update(resource, rid, status=rng.choice(ORDER_STATUSES))
            else:
                self.update(resource, rid, stock_quantity=rng.randint(0, 500))

        return random_churn(rng, count, RESOURCES, ids=lambda r: self.collections[r].by_id, create=self.create,
                            update=update, delete=lambda r, rid: self.delete(r, rid, force=r == "customers"))


    # --- auth ------------------------------------------------------------------------------------

    def _authenticate(self, request: Request) -> None:
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("basic "):
            try:
                key, _, secret = base64.b64decode(auth[6:]).decode().partition(":")
            except ValueError:
                raise ApiError(401, "woocommerce_rest_authentication_error", "Consumer key is invalid.") from None
            return self._check_keys(key, secret)
        if request.arg("consumer_key") is not None:
            return self._check_keys(request.arg("consumer_key") or "", request.arg("consumer_secret") or "")
        oauth = dict(request.query)
        if auth.lower().startswith("oauth "):
            for part in auth[6:].split(","):
                key, _, value = part.strip().partition("=")
                oauth[key] = urllib.parse.unquote(value.strip('"'))
        if "oauth_signature" in oauth:
            return self._check_oauth(request, oauth)
        raise ApiError(401, "woocommerce_rest_cannot_view", "Sorry, you cannot list resources.")

    def _check_keys(self, key: str, secret: str) -> None:
        if not hmac.compare_digest(key, self.consumer_key):
            raise ApiError(401, "woocommerce_rest_authentication_error", "Consumer key is invalid.")
        if not hmac.compare_digest(secret, self.consumer_secret):
            raise ApiError(401, "woocommerce_rest_authentication_error", "Consumer secret is invalid.")

    def _check_oauth(self, request: Request, oauth: dict[str, str]) -> None:
        for name in ("oauth_consumer_key", "oauth_timestamp", "oauth_nonce", "oauth_signature",
                     "oauth_signature_method"):
            if not oauth.get(name):
                raise ApiError(401, "woocommerce_rest_authentication_error", f"{name} parameter is missing.")
        if not hmac.compare_digest(oauth["oauth_consumer_key"], self.consumer_key):
            raise ApiError(401, "woocommerce_rest_authentication_error", "Consumer key is invalid.")
        digest = {"HMAC-SHA1": hashlib.sha1, "HMAC-SHA256": hashlib.sha256}.get(oauth["oauth_signature_method"])
        if digest is None:
            raise ApiError(401, "woocommerce_rest_authentication_error",
                           "Invalid signature - signature method is invalid.")
        now = time.time()
        try:
            stamp = int(oauth["oauth_timestamp"])
        except ValueError:
            stamp = 0
        if abs(now - stamp) > OAUTH_WINDOW:
            raise ApiError(401, "woocommerce_rest_authentication_error", "Invalid timestamp.")
        params = [(k, v) for k, v in request.query if k != "oauth_signature"]
        if not any(k == "oauth_nonce" for k, _ in params):
            params += [(k, v) for k, v in oauth.items() if k.startswith("oauth_") and k != "oauth_signature"]
        normalized = "&".join(f"{k}={v}" for k, v in sorted((_pct(k), _pct(v)) for k, v in params))
        base_uri = f"{request.scheme}://{request.host}{request.path}"
        base = "&".join([request.method.upper(), _pct(base_uri), _pct(normalized)])
        expected = base64.b64encode(
            hmac.new(f"{_pct(self.consumer_secret)}&".encode(), base.encode(), digest).digest()
        ).decode()
        if not hmac.compare_digest(expected, oauth["oauth_signature"]):
            raise ApiError(401, "woocommerce_rest_authentication_error",
                           "Invalid signature - provided signature does not match.")
        nonce_key = f"{oauth['oauth_consumer_key']}:{oauth['oauth_nonce']}"
        self._nonces = {k: t for k, t in self._nonces.items() if now - t < OAUTH_WINDOW} \
            if len(self._nonces) > 10_000 else self._nonces
        if nonce_key in self._nonces:
            raise ApiError(401, "woocommerce_rest_authentication_error",
                           "Invalid nonce - nonce has already been used.")
        self._nonces[nonce_key] = now

    # --- handlers ----------------------------------------------------------------------------------

    def _resource(self, request: Request) -> _Collection:
        return self.collections[request.path[len(PREFIX) + 1:].split("/")[0].lower()]

    async def _guard(self, request: Request, handler: Callable[[Request], Response]) -> Response:
        try:
            self._authenticate(request)
            return handler(request)
        except ApiError as exc:
            return exc.response

    async def _list(self, request: Request) -> Response:
        return await self._guard(request, self._list_sync)

    def _int_param(self, request: Request, name: str, default: int, low: int, high: int | None = None) -> int:
        raw = request.arg(name)
        if raw is None or raw == "":
            return default
        try:
            value = int(raw)
        except ValueError:
            raise ApiError(400, "rest_invalid_param", f"Invalid parameter(s): {name}",
                           params={name: f"{name} is not of type integer."}) from None
        if value < low or (high is not None and value > high):
            bound = f"between {low} and {high} (inclusive)" if high is not None else f"greater than or equal to {low}"
            raise ApiError(400, "rest_invalid_param", f"Invalid parameter(s): {name}",
                           params={name: f"{name} must be {bound}"})
        return value

    def _id_list(self, request: Request, name: str) -> list[int] | None:
        raw = request.arg(name)
        if raw is None or raw == "":
            return None
        try:
            return [int(x) for x in raw.split(",") if x.strip()]
        except ValueError:
            raise ApiError(400, "rest_invalid_param", f"Invalid parameter(s): {name}",
                           params={name: f"{name}[0] is not of type integer."}) from None

    def _list_sync(self, request: Request) -> Response:
        coll = self._resource(request)
        customers = coll.name == "customers"
        per_page = self._int_param(request, "per_page", 10, 1, 100)
        page = self._int_param(request, "page", 1, 1)
        offset = self._int_param(request, "offset", -1, 0)
        if self.app.faults.loop:  # the fault: every page asked for is the first one
            page, offset = 1, -1
        order = (request.arg("order") or ("asc" if customers else "desc")).lower()
        if order not in ("asc", "desc"):
            raise ApiError(400, "rest_invalid_param", "Invalid parameter(s): order",
                           params={"order": "order is not one of asc, desc."})
        valid = ("id", "include", "name", "registered_date") if customers else \
            ("date", "id", "include", "title", "slug", "modified")
        orderby = request.arg("orderby") or ("name" if customers else "date")
        if orderby not in valid:
            raise ApiError(400, "rest_invalid_param", "Invalid parameter(s): orderby",
                           params={"orderby": f"orderby is not one of {', '.join(valid)}."})
        include = self._id_list(request, "include")
        exclude = set(self._id_list(request, "exclude") or [])

        ids: list[int]
        gmt = (request.arg("dates_are_gmt") or "").lower() in ("1", "true")
        after = before = None
        if not customers:
            bounds = {}
            for name in ("modified_after", "modified_before", "after", "before"):
                if raw := request.arg(name):
                    bounds[name] = _fmt(_parse_date(raw, gmt=gmt, name=name))
            after, before = bounds.get("modified_after"), bounds.get("modified_before")
            if orderby == "modified" or after or before:
                lo = bisect.bisect_right(coll.by_modified, (after, math.inf)) if after else 0
                hi = bisect.bisect_left(coll.by_modified, (before, -1)) if before else len(coll.by_modified)
                ids = [rid for _, rid in coll.by_modified[lo:hi]]
                if orderby != "modified":
                    ids.sort()
            else:
                ids = list(coll.by_id)
            if created_after := bounds.get("after"):
                ids = [i for i in ids if orjson.loads(coll.docs[i])["date_created_gmt"] > created_after]
            if created_before := bounds.get("before"):
                ids = [i for i in ids if orjson.loads(coll.docs[i])["date_created_gmt"] < created_before]
        else:
            ids = list(coll.by_id)
            if orderby == "name":
                ids.sort(key=lambda i: (coll.sort_names[i], i))
        if include is not None:
            wanted = set(include)
            ids = [i for i in include if i in coll.docs] if orderby == "include" else \
                [i for i in ids if i in wanted]
        if exclude:
            ids = [i for i in ids if i not in exclude]
        if not customers and (status := request.arg("status")) and status != "any":
            allowed = set(status.split(","))
            ids = [i for i in ids if coll.statuses[i] in allowed]
        elif not customers and coll.name == "orders" and not request.arg("status"):
            pass  # default "any": trashed orders are listed too
        if customers and (role := request.arg("role")) and role not in ("all", "customer"):
            ids = []
        if search := (request.arg("search") or "").lower():
            ids = [i for i in ids if search in coll.docs[i].decode().lower()]
        if order == "desc" and orderby != "include":
            ids.reverse()

        total = len(ids)
        pages = math.ceil(total / per_page) if total else 0
        start = offset if offset >= 0 else (page - 1) * per_page
        if page > max(pages, 1) and offset < 0:
            raise ApiError(400, "rest_post_invalid_page_number",
                           "The page number requested is larger than the number of pages available.")
        chunk = ids[start:start + per_page]
        fields = [f for f in (request.arg("_fields") or "").split(",") if f]
        if fields:
            items = []
            for rid in chunk:
                doc = orjson.loads(coll.docs[rid])
                items.append(orjson.dumps({f: doc[f] for f in fields if f in doc}))
            body = b"[" + b",".join(items) + b"]"
        else:
            body = b"[" + b",".join(coll.docs[rid] for rid in chunk) + b"]"
        headers = [("content-type", "application/json; charset=UTF-8"), ("x-wp-total", str(total)),
                   ("x-wp-totalpages", str(pages)), ("date", time.strftime("%a, %d %b %Y %H:%M:%S GMT",
                                                                            self._now().timetuple()))]
        links = self._links(request, page, pages)
        if links:
            headers.append(("link", links))
        return Response(200, body, headers)

    def _links(self, request: Request, page: int, pages: int) -> str:
        base = f"{request.scheme}://{request.host}{request.path}"
        query = [(k, v) for k, v in request.query if k != "page"]
        rels = []
        for rel, number in (("first", 1), ("prev", page - 1), ("next", page + 1), ("last", pages)):
            if 1 <= number <= pages and not (rel in ("first", "last") and pages <= 1):
                url = base + "?" + urllib.parse.urlencode([*query, ("page", str(number))])
                rels.append(f'<{url}>; rel="{rel}"')
        return ", ".join(rels)

    def _record_id(self, request: Request, coll: _Collection) -> int:
        try:
            rid = int(request.params["id"])
        except ValueError:
            raise ApiError(404, "rest_no_route", "No route was found matching the URL and request method.") from None
        if rid not in coll.docs:
            raise ApiError(404, f"woocommerce_rest_{coll.name.rstrip('s')}_invalid_id", "Invalid ID.")
        return rid

    async def _read(self, request: Request) -> Response:
        def read(request: Request) -> Response:
            coll = self._resource(request)
            return Response(200, coll.docs[self._record_id(request, coll)],
                            [("content-type", "application/json; charset=UTF-8")])
        return await self._guard(request, read)

    def _body(self, request: Request) -> dict[str, Any]:
        try:
            body = request.json()
        except orjson.JSONDecodeError:
            raise ApiError(400, "rest_invalid_json", "Invalid JSON body passed.") from None
        if not isinstance(body, dict):
            raise ApiError(400, "rest_invalid_json", "Invalid JSON body passed.")
        return body

    async def _create(self, request: Request) -> Response:
        def create(request: Request) -> Response:
            coll = self._resource(request)
            body = {k: v for k, v in self._body(request).items() if k != "id"}
            if coll.name == "customers" and not body.get("email"):
                raise ApiError(400, "rest_missing_callback_param", "Missing parameter(s): email",
                               params=["email"])
            return Response.json(self.create(coll.name, **body), 201)
        return await self._guard(request, create)

    async def _update(self, request: Request) -> Response:
        def update(request: Request) -> Response:
            coll = self._resource(request)
            rid = self._record_id(request, coll)
            body = {k: v for k, v in self._body(request).items() if k != "id"}
            return Response.json(self.update(coll.name, rid, **body))
        return await self._guard(request, update)

    async def _delete(self, request: Request) -> Response:
        def delete(request: Request) -> Response:
            coll = self._resource(request)
            rid = self._record_id(request, coll)
            force = (request.arg("force") or "").lower() in ("1", "true")
            if coll.name == "customers" and not force:
                raise ApiError(501, "woocommerce_rest_trash_not_supported",
                               "Customers do not support trashing.")
            if not force and coll.statuses.get(rid) == "trash":
                raise ApiError(410, "woocommerce_rest_already_trashed", "The resource has already been deleted.")
            return Response.json(self.delete(coll.name, rid, force=force))
        return await self._guard(request, delete)

    async def _batch(self, request: Request) -> Response:
        def batch(request: Request) -> Response:
            coll = self._resource(request)
            body = self._body(request)
            ops = {k: body.get(k) or [] for k in ("create", "update", "delete")}
            if sum(len(v) for v in ops.values()) > BATCH_LIMIT:
                raise ApiError(413, "woocommerce_rest_request_entity_too_large",
                               f"Unable to accept more than {BATCH_LIMIT} items for this request.")
            out: dict[str, list[Any]] = {"create": [], "update": [], "delete": []}
            for item in ops["create"]:
                out["create"].append(self.create(coll.name, **{k: v for k, v in item.items() if k != "id"}))
            for item in ops["update"]:
                rid = int(item.get("id", 0))
                if rid in coll.docs:
                    out["update"].append(self.update(coll.name, rid, **{k: v for k, v in item.items() if k != "id"}))
                else:
                    out["update"].append({"id": rid, "error": {"code": "woocommerce_rest_invalid_id",
                                                               "message": "Invalid ID.", "data": {"status": 400}}})
            for rid in ops["delete"]:
                if int(rid) in coll.docs:
                    out["delete"].append(self.delete(coll.name, int(rid), force=True))
                else:
                    out["delete"].append({"id": int(rid), "error": {"code": "woocommerce_rest_invalid_id",
                                                                    "message": "Invalid ID.", "data": {"status": 400}}})
            return Response.json({k: v for k, v in out.items() if ops[k]})
        return await self._guard(request, batch)

    async def _mutate_endpoint(self, request: Request) -> Response:
        body = request.json() or {}
        return Response.json(self.random_changes(int(body.get("count", 1))))

    async def _state_endpoint(self, request: Request) -> Response:
        return Response.json(self.counts())
