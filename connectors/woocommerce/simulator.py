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

Parameters are read the way PHP fills $_GET/$_POST (`php_parse`, `PhpInput`): a repeated key keeps
its last value, `k[]`/`k[sub]` build arrays; authentication, paging, filters and Link headers
all read that one parse, and the OAuth base string is WC_REST_Authentication's (API_FACTS_WRITES
§A.1, §A.7), so the official Python client's doubled parameters are accepted as a store accepts them.

Writes follow API_FACTS_WRITES §A (`write_create`/`write_update`): email and SKU uniqueness with
the real error codes (`data.resource_id` for a SKU), an `id` in a create refused, order checks,
`meta_data` updated by id or by key (null deletes), every save moving `date_modified`, 201 with
`Location`, and a batch that skips route validation and reports each failed item in place.
`create`/`update`/`delete` are the tests' unchecked helpers; `counts()` says how many records
each collection holds.

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
import re
import time
import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson

from freshd.connectors.simcollection import random_churn
from freshd.connectors.simulator import FakeData, Request, Response, SimulatorApp

PREFIX = "/wp-json/wc/v3"
SITE_TZ = timezone(timedelta(hours=2))
RESOURCES = ("customers", "orders", "products")
ORDER_STATUSES = ("pending", "processing", "on-hold", "completed", "cancelled", "refunded", "failed")
OAUTH_WINDOW = 15 * 60
BATCH_LIMIT = 100
UNIQUE_KEYS = {"customers": "email", "products": "sku"}  # what the data layer keeps unique
POST_TYPES = {"customers": "customer", "orders": "shop_order", "products": "product"}  # error codes use these
OAUTH_REQUIRED = ("oauth_consumer_key", "oauth_timestamp", "oauth_nonce", "oauth_signature", "oauth_signature_method")


def error(status: int, code: str, message: str, **data: Any) -> Response:
    return Response.json({"code": code, "message": message, "data": {"status": status, **data}}, status)


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, **data: Any) -> None:
        self.status, self.code, self.message, self.data = status, code, message, {"status": status, **data}
        self.response = error(status, code, message, **data)

    def batch_item(self, rid: int) -> dict[str, Any]:
        """How `batch_items` reports this error for one item: the WP_Error's code, message and data."""
        return {"id": rid, "error": {"code": self.code, "message": self.message, "data": self.data}}


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
    """PHP's rawurlencode (RFC 3986: only A-Z a-z 0-9 - _ . ~ stay as they are)."""
    return urllib.parse.quote(value, safe="~-._")


def _is_email(value: Any) -> bool:
    """Close to WordPress' is_email(): local@domain.tld, no spaces, a dot in the domain."""
    return isinstance(value, str) and re.fullmatch(r"[^@\s]+@[^@\s.]+(\.[^@\s.]+)+", value) is not None


def _merge_line_items(rid: int, current: list[dict[str, Any]], posted: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Posted line items with a known `id` change that item; the others are added."""
    items = {item["id"]: dict(item) for item in current if isinstance(item, dict) and "id" in item}
    for line in posted:
        if line.get("id") in items:
            items[line["id"]].update(line)
        else:
            new_id = max([rid * 10, *items]) + 1
            items[new_id] = {**line, "id": new_id}
    return list(items.values())


# --- PHP's view of a request ($_GET, $_POST) -------------------------------------------------------
#
# WordPress reads every parameter from PHP's $_GET/$_POST (API_FACTS_WRITES §A.1), and the OAuth
# check signs those arrays (§A.7), so the simulator parses a query once, the PHP way, and every
# handler (auth, paging, filters, links) reads that one result.

PhpValue = str | dict[str, "PhpValue"]  # a PHP array is an ordered map; integer keys kept as decimal text
MAX_INPUT_VARS = 1000  # php.ini max_input_vars: the rest of the input is dropped


def _php_path(key: str) -> list[str | None] | None:
    """A query key as php_register_variable_ex splits it: `a.b c[x][]` -> ["a_b_c", "x", None]
    (None: append).  None when PHP drops the pair (an empty name)."""
    key = key.lstrip(" ")
    pos = key.find("[")
    name = re.sub(r"[ .]", "_", key if pos < 0 else key[:pos])
    if not name:
        return None
    if pos < 0:
        return [name]
    path: list[str | None] = [name]
    while True:
        close = key.find("]", pos + 1)
        if close < 0:  # '[' never closed: on the name it is a plain character, made '_'
            return [name + "_" + key[pos + 1:]] if len(path) == 1 else path
        index = key[pos + 1:close]
        path.append(index or None)
        pos = close + 1
        if pos >= len(key) or key[pos] != "[":
            return path  # anything after the last ']' is ignored


def _next_index(array: dict[str, PhpValue]) -> str:
    numbers = [int(k) for k in array if k.isdigit() and (k == "0" or not k.startswith("0"))]
    return str(max(numbers) + 1 if numbers else 0)


def php_parse(pairs: Iterable[tuple[str, str]]) -> dict[str, PhpValue]:
    """The array PHP builds from url-decoded pairs (parse_str, $_GET): a repeated key keeps its last
    value, `k[]` appends, `k[sub]` nests, dots and spaces in names become `_`."""
    out: dict[str, PhpValue] = {}
    for count, (key, value) in enumerate(pairs):
        if count >= MAX_INPUT_VARS:
            break
        path = _php_path(key)
        if path is None:
            continue
        node = out
        for depth, part in enumerate(path):
            name = _next_index(node) if part is None else part
            if depth == len(path) - 1:
                node[name] = value
            else:
                child = node.get(name)
                if not isinstance(child, dict):
                    child = node[name] = {}
                node = child
    return out


def _php_empty(value: PhpValue | None) -> bool:
    return value is None or value in ("", "0") or value == {}


def _encode_values(value: PhpValue) -> PhpValue:
    """wc_rest_urlencode_rfc3986 on the values: rawurlencode, recursively (inner keys stay raw)."""
    return _pct(value) if isinstance(value, str) else {k: _encode_values(v) for k, v in value.items()}


def _php_pairs(items: Iterable[tuple[str, PhpValue]], prefix: str = "") -> list[str]:
    """join_with_equals_sign: `k=v`, nested keys as `k%5Bsub%5D=v` (PHP array order, not re-sorted)."""
    out: list[str] = []
    for key, value in items:
        name = f"{prefix}%5B{key}%5D" if prefix else key
        if isinstance(value, dict):
            out += _php_pairs(value.items(), name)
        else:
            out.append(f"{name}={value}")
    return out


def _php_query_string(params: Iterable[tuple[str, PhpValue]], prefix: str = "") -> list[tuple[str, str]]:
    """http_build_query's pairs for a parsed array (`k[0]=a&k[1]=b`), for Link headers."""
    out: list[tuple[str, str]] = []
    for key, value in params:
        name = f"{prefix}[{key}]" if prefix else key
        out += _php_query_string(value.items(), name) if isinstance(value, dict) else [(name, value)]
    return out


@dataclass(frozen=True, slots=True)
class PhpInput:
    """One request's $_GET and $_POST (a form-encoded POST body), parsed once."""

    get: dict[str, PhpValue]
    post: dict[str, PhpValue]

    @classmethod
    def of(cls, request: Request) -> PhpInput:
        post: dict[str, PhpValue] = {}
        if request.method == "POST" and request.headers.get("content-type", "").lower().startswith(
                "application/x-www-form-urlencoded"):
            post = php_parse(urllib.parse.parse_qsl(request.body.decode("utf-8", "replace"), keep_blank_values=True))
        return cls(php_parse(request.query), post)

    def value(self, name: str) -> PhpValue | None:
        """WP_REST_Request::get_param for our routes: the form body first, then the query."""
        found = self.post.get(name)
        return self.get.get(name) if found is None else found

    def text(self, name: str) -> str | None:
        """A scalar parameter; an array where a string is expected is WordPress' 400."""
        found = self.value(name)
        if isinstance(found, dict):
            raise ApiError(400, "rest_invalid_param", f"Invalid parameter(s): {name}",
                           params={name: f"{name} is not of type string."})
        return found

    def items(self, name: str) -> list[str] | None:
        """An array-typed parameter: `k[]=a&k[]=b`, or `k=a,b` (wp_parse_list splits on commas and spaces)."""
        found = self.value(name)
        if found is None:
            return None
        if isinstance(found, dict):
            return [v for v in found.values() if isinstance(v, str)]
        return [part for part in re.split(r"[\s,]+", found) if part]


@dataclass
class _Collection:
    name: str
    docs: dict[int, bytes] = field(default_factory=dict)  # id -> JSON
    modified: dict[int, str] = field(default_factory=dict)  # id -> date_modified_gmt
    by_id: list[int] = field(default_factory=list)  # ascending
    by_modified: list[tuple[str, int]] = field(default_factory=list)  # ascending (date_modified_gmt, id)
    sort_names: dict[int, str] = field(default_factory=dict)
    statuses: dict[int, str] = field(default_factory=dict)
    roles: dict[int, str] = field(default_factory=dict)  # customers: the WordPress role
    # the natural key a store keeps unique (customers: email, products: SKU), casefolded -> id
    unique: dict[str, int] = field(default_factory=dict)
    unique_of: dict[int, str] = field(default_factory=dict)
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
        if "role" in record:
            self.roles[rid] = str(record["role"])
        self._index_key(rid, record.get(UNIQUE_KEYS.get(self.name, "")))
        self.next_id = max(self.next_id, rid + 1)

    def _index_key(self, rid: int, value: Any) -> None:
        old = self.unique_of.pop(rid, None)
        if old is not None and self.unique.get(old) == rid:
            del self.unique[old]
        if isinstance(value, str) and value:
            # MySQL's default collation compares case-insensitively (UNCONFIRMED for every store)
            self.unique_of[rid] = value.casefold()
            self.unique.setdefault(value.casefold(), rid)

    def holder(self, value: str, *, other_than: int = 0) -> int:
        """The id of the record holding this natural key (0: none, or only `other_than`)."""
        found = self.unique.get(value.casefold(), 0)
        return 0 if found == other_than else found

    def remove(self, rid: int) -> None:
        self.by_modified.remove((self.modified.pop(rid), rid))
        self.by_id.remove(rid)
        del self.docs[rid]
        self.sort_names.pop(rid, None)
        self.statuses.pop(rid, None)
        self.roles.pop(rid, None)
        self._index_key(rid, None)

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
        self.read_only_key = False  # the key's permissions are `read` (API_FACTS_WRITES §A.7)
        self.fake = FakeData(seed)
        self.collections = {name: _Collection(name) for name in RESOURCES}
        self._nonces: dict[str, float] = {}
        self._next_meta_id = 1000  # meta_data row ids (wp_postmeta.meta_id / umeta_id)
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
                    # as WooCommerce sends them (~1.2 KB): plugin metadata and REST links (no rng draw)
                    "meta_data": [
                        {"id": rid * 10 + 1, "key": "wc_last_active", "value": str(int(modified.timestamp()))},
                        {"id": rid * 10 + 2, "key": "_wcs_subscription_ids_cache", "value": [rid * 7, rid * 7 + 3]},
                        {"id": rid * 10 + 3, "key": "mailchimp_woocommerce_is_subscribed", "value": "1"}],
                    "_links": {"self": [{"href": f"https://shop.example.com{PREFIX}/customers/{rid}",
                                         "targetHints": {"allow": ["GET", "POST", "PUT", "PATCH", "DELETE"]}}],
                               "collection": [{"href": f"https://shop.example.com{PREFIX}/customers"}]}}
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
                                    "total": total}],
                    "meta_data": []}
        name = fake.product_name()
        return {"id": rid, "name": f"{name} {rid}", "slug": f"{name.lower().replace(' ', '-')}-{rid}", **dates,
                "type": "simple", "status": "publish", "featured": False, "sku": f"SKU-{rid:05d}",
                "price": fake.price(), "regular_price": fake.price(), "manage_stock": True,
                "stock_quantity": fake.rng.randint(0, 500), "stock_status": "instock", "meta_data": []}

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
        """Customers are removed; orders and products go to the trash unless forced.  Returns the
        record as it was *before* (the REST response is built first, API_FACTS_WRITES §A.2)."""
        record = self.collections[resource].get(rid)
        if force or resource == "customers":
            self.collections[resource].remove(rid)
            return record
        self.update(resource, rid, status="trash")
        return record

    # --- writes as the REST controllers and data stores make them (API_FACTS_WRITES §A.2-A.5) -----
    #
    # `create`/`update` above are the test helpers: they store what they are given.  The REST routes
    # and the batch route go through `write_create`/`write_update`, which check what the controller's
    # create_item/update_item and the data layer check (the batch route skips only the route's
    # argument validation, done in the handlers below).

    def write_create(self, resource: str, item: dict[str, Any]) -> dict[str, Any]:
        """create_item: refuse an `id`, run the data layer's checks, save, return the saved record."""
        if item.get("id"):
            kind = POST_TYPES[resource]
            noun = "resource" if resource == "customers" else kind
            raise ApiError(400, f"woocommerce_rest_{kind}_exists", f"Cannot create existing {noun}.")
        coll = self.collections[resource]
        fields = {k: v for k, v in item.items() if k not in ("id", "meta_data")}
        if resource == "customers":
            email = fields.get("email") or ""
            if email and not _is_email(email):  # WC_Customer::set_email, before anything is saved
                raise ApiError(400, "customer_invalid_email", "Invalid email address")
            if not email:  # wc_create_new_customer (only reachable through the batch route)
                raise ApiError(400, "registration-error-invalid-email", "Please provide a valid email address.")
            if coll.holder(email):  # email_exists(): any user, whatever its role
                raise ApiError(400, "registration-error-email-exists",
                               f"An account is already registered with {email}. Please log in or use a "
                               "different email address.")
            username = fields.get("username")
            if isinstance(username, str) and any(
                    str(coll.get(rid).get("username", "")).casefold() == username.casefold() for rid in coll.by_id):
                raise ApiError(400, "registration-error-username-exists",
                               "An account is already registered with that username. Please choose another.")
            fields.setdefault("role", "customer")
            fields.pop("password", None)  # write-only
        self._check_product(resource, fields, rid=0)
        self._check_order(resource, fields, None)
        now = self._now()
        record = {**self._make(resource, coll.next_id, now, now), **fields}
        record["meta_data"] = self._apply_meta(record.get("meta_data") or [], item.get("meta_data"))
        coll.put(record)
        return record

    def write_update(self, resource: str, rid: int, item: dict[str, Any]) -> dict[str, Any]:
        """update_item on an existing record: the controller's and the data layer's checks, then a
        save that always moves date_modified (§A.5), even when nothing changed."""
        coll = self.collections[resource]
        current = coll.get(rid)
        fields = {k: v for k, v in item.items() if k not in ("id", "meta_data")}
        if resource == "customers":
            email = fields.get("email")
            if isinstance(email, str) and email and coll.holder(email, other_than=rid):
                raise ApiError(400, "woocommerce_rest_customer_invalid_email", "Email address is invalid.")
            if email is not None and (not isinstance(email, str) or (email and not _is_email(email))):
                raise ApiError(400, "customer_invalid_email", "Invalid email address")
            if "username" in fields and fields["username"] != current.get("username"):
                raise ApiError(400, "woocommerce_rest_customer_invalid_argument", "Username isn't editable.")
            fields.pop("password", None)
        self._check_product(resource, fields, rid=rid)
        self._check_order(resource, fields, current)
        if resource == "orders" and isinstance(fields.get("line_items"), list):
            fields["line_items"] = _merge_line_items(rid, current.get("line_items") or [], fields["line_items"])
        for address in ("billing", "shipping"):  # set_billing_* / set_shipping_*: only the keys sent
            if isinstance(fields.get(address), dict) and isinstance(current.get(address), dict):
                fields[address] = {**current[address], **fields[address]}
        record = {**current, **fields, **self._dates("date_modified", self._now())}
        if "meta_data" in item:
            record["meta_data"] = self._apply_meta(current.get("meta_data") or [], item["meta_data"])
        coll.put(record)
        return record

    def _check_product(self, resource: str, fields: dict[str, Any], *, rid: int) -> None:
        """WC_Product::set_sku: a SKU another product holds is refused, naming the holder."""
        sku = fields.get("sku")
        if resource != "products" or not isinstance(sku, str) or not sku:
            return
        holder = self.collections["products"].holder(sku, other_than=rid)
        if holder:
            raise ApiError(400, "product_invalid_sku", "Invalid or duplicated SKU.", resource_id=holder,
                           unique_sku=f"{sku}-1")

    def _check_order(self, resource: str, fields: dict[str, Any], current: dict[str, Any] | None) -> None:
        """The orders controller: a known customer (0 is a guest) and a product for every new line item."""
        if resource != "orders":
            return
        customer = fields.get("customer_id")
        if customer not in (None, 0, "0") and (
                not str(customer).isdigit() or int(str(customer)) not in self.collections["customers"].docs):
            raise ApiError(400, "woocommerce_rest_invalid_customer_id", "Customer ID is invalid.")
        for line in fields.get("line_items") or []:
            if not isinstance(line, dict):
                raise ApiError(400, "rest_invalid_param", "Invalid parameter(s): line_items",
                               params={"line_items": "line_items[0] is not of type object."})
            known = current is not None and line.get("id") in {i.get("id") for i in current.get("line_items") or []}
            if not known and not (line.get("product_id") or line.get("sku") or line.get("variation_id")):
                raise ApiError(400, "woocommerce_rest_required_product_reference", "Product ID or SKU is required.")

    def _apply_meta(self, rows: list[dict[str, Any]], incoming: Any) -> list[dict[str, Any]]:
        """`update_meta_data(key, value, id)` for each item, then the save (API_FACTS_WRITES §A.4): with
        an id, that row (its key may change); without, the first row with the key (other rows with
        that key are dropped) or a new row; a null value deletes the row."""
        out = [dict(row) for row in rows]
        for meta in incoming if isinstance(incoming, list) else []:
            if not isinstance(meta, dict) or not isinstance(meta.get("key"), str):
                continue
            key, value = meta["key"], meta.get("value")
            target = None
            if meta.get("id"):
                target = next((row for row in out if row["id"] == meta["id"]), None)
            else:
                matches = [row for row in out if row["key"] == key]
                for row in matches[1:]:
                    row["value"] = None  # collapsed into the first: deleted on save
                target = matches[0] if matches else None
            if target is None:  # add_meta_data(key, value, unique=true)
                out = [row for row in out if row["key"] != key]
                self._next_meta_id += 1
                out.append({"id": self._next_meta_id, "key": key, "value": value})
            else:
                target["key"], target["value"] = key, value
        return [row for row in out if row["value"] is not None]

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


    # --- auth (WC_REST_Authentication, API_FACTS_WRITES §A.7) ------------------------------------

    def _authenticate(self, request: Request, php: PhpInput) -> None:
        key, secret = php.get.get("consumer_key"), php.get.get("consumer_secret")
        if isinstance(key, str) and isinstance(secret, str) and key and secret:  # $_GET keys come first
            return self._check_keys(key, secret)
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("basic "):
            try:
                key, _, secret = base64.b64decode(auth[6:]).decode().partition(":")
            except ValueError:
                raise ApiError(401, "woocommerce_rest_authentication_error", "Consumer key is invalid.") from None
            return self._check_keys(key, secret)
        params: dict[str, PhpValue] = {**php.get, **php.post}  # array_merge($_GET, $_POST)
        if auth.startswith("OAuth "):  # the header's oauth_* pairs win
            for name, quoted, bare in re.findall(r'(oauth_[a-z_-]*)=(?:"([^"]*)"|([^,]*))', auth):
                params[name] = urllib.parse.unquote_plus(quoted or bare)
        missing = [n for n in OAUTH_REQUIRED if _php_empty(params.get(n))]
        if len(missing) < len(OAUTH_REQUIRED):  # at least one given: this is an OAuth attempt
            if missing:
                noun = "parameter" if len(missing) == 1 else "parameters"
                raise ApiError(401, "woocommerce_rest_authentication_missing_parameter",
                               f"Missing OAuth {noun} {', '.join(missing)}")
            return self._check_oauth(request, params)
        raise ApiError(401, "woocommerce_rest_cannot_view", "Sorry, you cannot list resources.")

    def _check_keys(self, key: str, secret: str) -> None:
        if not hmac.compare_digest(key, self.consumer_key):
            raise ApiError(401, "woocommerce_rest_authentication_error", "Consumer key is invalid.")
        if not hmac.compare_digest(secret, self.consumer_secret):
            raise ApiError(401, "woocommerce_rest_authentication_error", "Consumer secret is invalid.")

    def signature_base_string(self, method: str, url: str, params: dict[str, PhpValue]) -> str:
        """`check_oauth_signature`'s string to sign: the parameters as PHP parsed them (a repeated key
        once, with its last value), sorted by raw top-level key (strcmp), each pair rawurlencoded twice."""
        pairs = sorted(((k, v) for k, v in params.items() if k != "oauth_signature"),
                       key=lambda kv: kv[0].encode())
        encoded = "%26".join(_pct(pair) for pair in _php_pairs([(_pct(k), _encode_values(v)) for k, v in pairs]))
        return f"{method.upper()}&{_pct(url)}&{encoded}"

    def _check_oauth(self, request: Request, params: dict[str, PhpValue]) -> None:
        if params["oauth_consumer_key"] != self.consumer_key:
            raise ApiError(401, "woocommerce_rest_authentication_error", "Consumer key is invalid.")
        # scheme and host: the site's Home URL (here: whatever the client reached), path: the request's
        base = self.signature_base_string(request.method, f"{request.scheme}://{request.host}{request.path}", params)
        digest = {"HMAC-SHA1": hashlib.sha1, "HMAC-SHA256": hashlib.sha256}.get(str(params["oauth_signature_method"]))
        if digest is None:
            raise ApiError(401, "woocommerce_rest_authentication_error",
                           "Invalid signature - signature method is invalid.")
        expected = base64.b64encode(hmac.new(f"{self.consumer_secret}&".encode(), base.encode(), digest).digest())
        given = params["oauth_signature"]
        given = urllib.parse.unquote(given.replace(" ", "+")) if isinstance(given, str) else ""
        if not hmac.compare_digest(expected.decode(), given):
            raise ApiError(401, "woocommerce_rest_authentication_error",
                           "Invalid signature - provided signature does not match.")
        now = time.time()
        try:
            stamp = int(str(params["oauth_timestamp"]))
        except ValueError:
            stamp = 0
        if abs(now - stamp) > OAUTH_WINDOW:
            raise ApiError(401, "woocommerce_rest_authentication_error", "Invalid timestamp.")
        nonce_key = f"{params['oauth_consumer_key']}:{params['oauth_nonce']}"
        self._nonces = {k: t for k, t in self._nonces.items() if now - t < OAUTH_WINDOW} \
            if len(self._nonces) > 10_000 else self._nonces
        if nonce_key in self._nonces:
            raise ApiError(401, "woocommerce_rest_authentication_error",
                           "Invalid nonce - nonce has already been used.")
        self._nonces[nonce_key] = now

    # --- handlers ----------------------------------------------------------------------------------

    def _resource(self, request: Request) -> _Collection:
        return self.collections[request.path[len(PREFIX) + 1:].split("/")[0].lower()]

    async def _guard(self, request: Request, handler: Callable[[Request, PhpInput], Response]) -> Response:
        try:
            php = PhpInput.of(request)  # the one reading of the query every step below uses
            self._authenticate(request, php)
            if self.read_only_key and request.method in ("POST", "PUT", "PATCH", "DELETE"):
                # WC_REST_Authentication::check_permissions: a key with `read` permission only
                raise ApiError(401, "woocommerce_rest_authentication_error",
                               "The API key provided does not have write permissions.")
            return handler(request, php)
        except ApiError as exc:
            return exc.response

    async def _list(self, request: Request) -> Response:
        return await self._guard(request, self._list_sync)

    def _int_param(self, php: PhpInput, name: str, default: int, low: int, high: int | None = None) -> int:
        raw = php.value(name)
        if isinstance(raw, dict):
            raise ApiError(400, "rest_invalid_param", f"Invalid parameter(s): {name}",
                           params={name: f"{name} is not of type integer."})
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

    def _id_list(self, php: PhpInput, name: str) -> list[int] | None:
        raw = php.items(name)
        if not raw:
            return None
        try:
            return [int(x) for x in raw]
        except ValueError:
            raise ApiError(400, "rest_invalid_param", f"Invalid parameter(s): {name}",
                           params={name: f"{name}[0] is not of type integer."}) from None

    def _list_sync(self, request: Request, php: PhpInput) -> Response:
        coll = self._resource(request)
        customers = coll.name == "customers"
        per_page = self._int_param(php, "per_page", 10, 1, 100)
        page = self._int_param(php, "page", 1, 1)
        offset = self._int_param(php, "offset", -1, 0)
        if self.app.faults.loop:  # the fault: every page asked for is the first one
            page, offset = 1, -1
        order = (php.text("order") or ("asc" if customers else "desc")).lower()
        if order not in ("asc", "desc"):
            raise ApiError(400, "rest_invalid_param", "Invalid parameter(s): order",
                           params={"order": "order is not one of asc, desc."})
        valid = ("id", "include", "name", "registered_date") if customers else \
            ("date", "id", "include", "title", "slug", "modified")
        orderby = php.text("orderby") or ("name" if customers else "date")
        if orderby not in valid:
            raise ApiError(400, "rest_invalid_param", "Invalid parameter(s): orderby",
                           params={"orderby": f"orderby is not one of {', '.join(valid)}."})
        include = self._id_list(php, "include")
        exclude = set(self._id_list(php, "exclude") or [])

        ids: list[int]
        gmt = (php.text("dates_are_gmt") or "").lower() in ("1", "true")
        after = before = None
        if not customers:
            bounds = {}
            for name in ("modified_after", "modified_before", "after", "before"):
                if raw := php.text(name):
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
        statuses = php.items("status")  # an array argument: status[]=a&status[]=b or status=a,b
        if not customers and statuses and "any" not in statuses:
            allowed = set(statuses)
            ids = [i for i in ids if coll.statuses[i] in allowed]
        # orders default to "any": trashed orders are listed too
        if customers:  # `role` defaults to customer; `all` lists every user (API_FACTS_WRITES §A.2)
            role = php.text("role") or "customer"
            if role != "all":
                ids = [i for i in ids if coll.roles.get(i) == role]
            if (email := php.text("email")) is not None:  # exact, not a search
                ids = [i for i in ids if i == coll.holder(email)] if email else ids
        elif coll.name == "products" and (skus := php.text("sku")):  # comma list, exact, IN (§A.1)
            wanted_skus = {coll.holder(part.strip()) for part in skus.split(",") if part.strip()}
            ids = [i for i in ids if i in wanted_skus]
        if search := (php.text("search") or "").lower():
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
        fields = php.items("_fields") or []
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
        links = self._links(request, php, page, pages)
        if links:
            headers.append(("link", links))
        return Response(200, body, headers)

    def _links(self, request: Request, php: PhpInput, page: int, pages: int) -> str:
        """WordPress rebuilds the query from the parsed $_GET (each key once), then sets `page`."""
        base = f"{request.scheme}://{request.host}{request.path}"
        query = _php_query_string((k, v) for k, v in php.get.items() if k != "page")
        rels = []
        for rel, number in (("first", 1), ("prev", page - 1), ("next", page + 1), ("last", pages)):
            if 1 <= number <= pages and not (rel in ("first", "last") and pages <= 1):
                url = base + "?" + urllib.parse.urlencode([*query, ("page", str(number))])
                rels.append(f'<{url}>; rel="{rel}"')
        return ", ".join(rels)

    def _record_id(self, request: Request, coll: _Collection, *, method: str = "GET") -> int:
        """The route's id, or the controller's "invalid id" error for this method (§A.2): products and
        orders PUT 400, DELETE 404; customers (current trunk, whose permission check looks the user up
        first) 404 `wc_user_invalid_id`.  GET keeps the simulator's older answer (404
        `woocommerce_rest_{customer,order,product}_invalid_id`, "Invalid ID."): a known deviation."""
        try:
            rid = int(request.params["id"])
        except ValueError:
            raise ApiError(404, "rest_no_route", "No route was found matching the URL and request method.") from None
        if rid not in coll.docs:
            if method == "GET":
                raise ApiError(404, f"woocommerce_rest_{coll.name.rstrip('s')}_invalid_id", "Invalid ID.")
            if coll.name == "customers":
                raise ApiError(404, "wc_user_invalid_id", "Invalid user ID.")
            raise ApiError(400 if method == "PUT" else 404, f"woocommerce_rest_{POST_TYPES[coll.name]}_invalid_id",
                           "Invalid ID.")
        return rid

    async def _read(self, request: Request) -> Response:
        def read(request: Request, php: PhpInput) -> Response:
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

    @staticmethod
    def _route_checks(resource: str, body: dict[str, Any], *, creating: bool) -> None:
        """What the single-record routes validate before the controller runs (the batch route skips it)."""
        if resource == "customers" and creating and not body.get("email"):
            raise ApiError(400, "rest_missing_callback_param", "Missing parameter(s): email", params=["email"])
        if resource == "customers" and not creating and "email" in body and not _is_email(body["email"]):
            # the v2/v3 schema's `format: email` (UNCONFIRMED: API_FACTS_WRITES §A.3)
            raise ApiError(400, "rest_invalid_param", "Invalid parameter(s): email",
                           params={"email": "Invalid email address."})

    async def _create(self, request: Request) -> Response:
        def create(request: Request, php: PhpInput) -> Response:
            coll = self._resource(request)
            body = self._body(request)
            self._route_checks(coll.name, body, creating=True)
            record = self.write_create(coll.name, body)
            location = f"{request.scheme}://{request.host}{PREFIX}/{coll.name}/{record['id']}"
            return Response.json(record, 201, [("location", location)])
        return await self._guard(request, create)

    async def _update(self, request: Request) -> Response:
        def update(request: Request, php: PhpInput) -> Response:
            coll = self._resource(request)
            rid = self._record_id(request, coll, method="PUT")
            body = self._body(request)
            self._route_checks(coll.name, body, creating=False)
            return Response.json(self.write_update(coll.name, rid, body))
        return await self._guard(request, update)

    async def _delete(self, request: Request) -> Response:
        def delete(request: Request, php: PhpInput) -> Response:
            coll = self._resource(request)
            rid = self._record_id(request, coll, method="DELETE")
            force = (php.text("force") or "").lower() in ("1", "true")
            if coll.name == "customers" and not force:
                raise ApiError(501, "woocommerce_rest_trash_not_supported",
                               "Customers do not support trashing.")
            if not force and coll.statuses.get(rid) == "trash":
                raise ApiError(410, "woocommerce_rest_already_trashed", "The resource has already been deleted.")
            return Response.json(self.delete(coll.name, rid, force=force))
        return await self._guard(request, delete)

    def _batch_update(self, coll: _Collection, item: Any) -> dict[str, Any]:
        rid = int(item.get("id") or 0) if isinstance(item, dict) else 0
        try:
            if not isinstance(item, dict):
                raise ApiError(400, "rest_invalid_param", "Invalid parameter(s): update")
            if rid not in coll.docs:  # update_item's own lookup (no permission callback in a batch)
                if coll.name == "customers":
                    raise ApiError(400, "woocommerce_rest_invalid_id", "Invalid resource ID.")
                raise ApiError(400, f"woocommerce_rest_{POST_TYPES[coll.name]}_invalid_id", "Invalid ID.")
            return self.write_update(coll.name, rid, item)
        except ApiError as exc:
            return exc.batch_item(rid)

    def _batch_delete(self, coll: _Collection, raw: Any) -> dict[str, Any]:
        rid = int(raw) if str(raw).isdigit() else 0
        if rid in coll.docs:
            return self.delete(coll.name, rid, force=True)  # a batch always deletes with force=true
        if coll.name == "customers":
            return ApiError(400, "woocommerce_rest_invalid_id", "Invalid resource id.").batch_item(rid)
        return ApiError(404, f"woocommerce_rest_{POST_TYPES[coll.name]}_invalid_id", "Invalid ID.").batch_item(rid)

    async def _batch(self, request: Request) -> Response:
        """`batch_items`: create_item/update_item/delete_item called directly, one item after the other,
        no transaction; 200 whatever failed, a failed create as id 0, a failed update with its id."""
        def batch(request: Request, php: PhpInput) -> Response:
            coll = self._resource(request)
            body = self._body(request)
            ops = {k: body.get(k) or [] for k in ("create", "update", "delete")}
            if sum(len(v) for v in ops.values()) > BATCH_LIMIT:
                raise ApiError(413, "woocommerce_rest_request_entity_too_large",
                               f"Unable to accept more than {BATCH_LIMIT} items for this request.")
            out: dict[str, list[Any]] = {"create": [], "update": [], "delete": []}
            for item in ops["create"]:
                try:
                    if not isinstance(item, dict):
                        raise ApiError(400, "rest_invalid_param", "Invalid parameter(s): create")
                    out["create"].append(self.write_create(coll.name, item))
                except ApiError as exc:
                    out["create"].append(exc.batch_item(0))
            out["update"] = [self._batch_update(coll, item) for item in ops["update"]]
            out["delete"] = [self._batch_delete(coll, rid) for rid in ops["delete"]]
            return Response.json({k: v for k, v in out.items() if ops[k]})
        return await self._guard(request, batch)

    async def _mutate_endpoint(self, request: Request) -> Response:
        body = request.json() or {}
        return Response.json(self.random_changes(int(body.get("count", 1))))

    async def _state_endpoint(self, request: Request) -> Response:
        return Response.json(self.counts())
