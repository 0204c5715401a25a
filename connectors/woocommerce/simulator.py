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
each collection holds.  PHP's parsing lives in php.py, the data layer in store.py.

Known deviations: plain HTTP accepts Basic and query keys (the real API
accepts those over HTTPS only); `search` matches names and emails only.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
import urllib.parse
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import orjson

from freshd.connectors.simcollection import link_header, page_count
from freshd.connectors.simulator import Handler, Request, Response, SimulatorApp
from freshd.connectors.woocommerce.php import ApiError, PhpInput, PhpValue, error, oauth_base_string, php_parse
from freshd.connectors.woocommerce.store import ORDER_STATUSES, POST_TYPES, PREFIX, RESOURCES, WooCollection, WooStore

__all__ = ["PREFIX", "ApiError", "WooCommerceSimulator", "error", "php_parse"]  # tests import these here
OAUTH_WINDOW = 15 * 60
BATCH_LIMIT = 100


class WooCommerceSimulator(WooStore):
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
        super().__init__(seed, clock)
        self.read_only_key = False  # the key's permissions are `read` (API_FACTS_WRITES §A.7)
        self.collections = {name: WooCollection(name) for name in RESOURCES}
        self._matching: dict[tuple[Any, ...], list[int]] = {}  # a listing's ids by its filters (see _list)
        rng = self.fake.rng
        spec: dict[str, tuple[str, str, Callable[[int], dict[str, Any]]]] = {  # mutate, corrupt, churn
            "customers": ("first_name", "last_name", lambda _: {"first_name": self.fake.person()[0]}),
            "orders": ("customer_note", "customer_note", lambda _: {"status": rng.choice(ORDER_STATUSES)}),
            "products": ("short_description", "name", lambda _: {"stock_quantity": rng.randint(0, 500)})}
        self.entities = {  # trashed orders and products are tombstones, not live
            name: self.entity(name, touch=touch, corrupt=corrupt, change=change,
                              live=lambda rid, c=self.collections[name]: c.statuses.get(rid) != "trash")  # type: ignore[misc]
            for name, (touch, corrupt, change) in spec.items()}
        self._nonces: dict[str, float] = {}
        self._next_meta_id = 1000  # meta_data row ids (wp_postmeta.meta_id / umeta_id)
        counts = {"customers": records if customers is None else customers,
                  "orders": records if orders is None else orders,
                  "products": max(records // 10, 1) if products is None else products}
        now = self.clock().replace(microsecond=0)
        self._seed(counts, now, history=timedelta(days=365), span=timedelta(days=300), drift=timedelta(days=5),
                   latest=now)
        self.app = SimulatorApp(error, changes=self.random_changes, state=self.counts)
        for resource in RESOURCES:
            base = f"{PREFIX}/{resource}"
            self.app.route("GET", base, self._guarded(self._list))
            self.app.route("POST", base, self._guarded(self._create))
            self.app.route("POST", base + "/batch", self._guarded(self._batch))
            self.app.route("GET", base + "/{id}", self._guarded(self._read))
            self.app.route("PUT", base + "/{id}", self._guarded(self._update))
            self.app.route("DELETE", base + "/{id}", self._guarded(self._delete))

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
        if (oauth := php.oauth_params(auth)) is not None:
            params, missing = oauth
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

    signature_base_string = staticmethod(oauth_base_string)

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

    def _resource(self, request: Request) -> WooCollection:
        return self.collections[request.path[len(PREFIX) + 1:].split("/")[0].lower()]

    def _guarded(self, handler: Callable[[Request, PhpInput], Response]) -> Handler:
        """A route's handler behind the authentication and the key's permissions."""
        async def serve(request: Request) -> Response:
            php = PhpInput.of(request)  # the one reading of the query every step below uses
            self._authenticate(request, php)
            if self.read_only_key and request.method in ("POST", "PUT", "PATCH", "DELETE"):
                # WC_REST_Authentication::check_permissions: a key with `read` permission only
                raise ApiError(401, "woocommerce_rest_authentication_error",
                               "The API key provided does not have write permissions.")
            return handler(request, php)
        return serve

    def _list(self, request: Request, php: PhpInput) -> Response:
        coll = self._resource(request)
        customers = coll.name == "customers"
        per_page = php.integer("per_page", 10, 1, 100)
        page = php.integer("page", 1, 1)
        offset = php.integer("offset", -1, 0)
        if self.app.faults.loop:  # the fault: every page asked for is the first one
            page, offset = 1, -1
        order = (php.text("order") or ("asc" if customers else "desc")).lower()
        if order not in ("asc", "desc"):
            raise ApiError.invalid_param("order", "order is not one of asc, desc.")
        valid = ("id", "include", "name", "registered_date") if customers else \
            ("date", "id", "include", "title", "slug", "modified")
        orderby = php.text("orderby") or ("name" if customers else "date")
        if orderby not in valid:
            raise ApiError.invalid_param("orderby", f"orderby is not one of {', '.join(valid)}.")
        include = php.ids("include")
        exclude = frozenset(php.ids("exclude") or [])
        gmt = (php.text("dates_are_gmt") or "").lower() in ("1", "true")
        bounds = {} if customers else {name: php.date(name, gmt=gmt) for name in (
            "modified_after", "modified_before", "after", "before")}
        statuses = tuple(php.items("status") or ())  # an array argument: status[]=a&status[]=b or status=a,b
        # what selects and orders the rows; every page of one listing asks the same, so the matching
        # ids are computed once per state of the table, not once per page (a 100k-row table scanned
        # for each page made the simulator, not the client, the bottleneck of a fast listing)
        key = (coll.name, coll.version, order, orderby, tuple(include) if include is not None else None, exclude,
               tuple(sorted(bounds.items())), statuses, php.text("role"), php.text("email"), php.text("sku"),
               php.text("search"))
        ids = self._matching.get(key)
        if ids is None:
            if len(self._matching) >= 16:
                self._matching.clear()
            ids = self._matching[key] = self._select(coll, php, customers=customers, order=order, orderby=orderby,
                                                     include=include, exclude=exclude, bounds=bounds,
                                                     statuses=statuses)
        total = len(ids)
        pages = page_count(total, per_page)
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
        # WordPress rebuilds the links' query from the parsed $_GET (each key once), then sets `page`
        headers += link_header(request, php.link_query(), page, pages, ("first", "prev", "next", "last"))
        return Response(200, body, headers)

    def _select(self, coll: WooCollection, php: PhpInput, *, customers: bool, order: str, orderby: str,
                include: list[int] | None, exclude: frozenset[int], bounds: dict[str, Any],
                statuses: tuple[str, ...]) -> list[int]:
        """The ids a listing matches, in its order (every page of it slices this)."""
        ids: list[int]
        if not customers:
            after, before = bounds.get("modified_after"), bounds.get("modified_before")
            if orderby == "modified" or after or before:
                ids = coll.modified_between(after, before)
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
        return ids

    def _record_id(self, request: Request, coll: WooCollection, *, method: str = "GET") -> int:
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

    def _read(self, request: Request, php: PhpInput) -> Response:
        coll = self._resource(request)
        return Response(200, coll.docs[self._record_id(request, coll)],
                        [("content-type", "application/json; charset=UTF-8")])

    def _body(self, request: Request) -> dict[str, Any]:
        body = request.json(ApiError(400, "rest_invalid_json", "Invalid JSON body passed."))
        if not isinstance(body, dict):
            raise ApiError(400, "rest_invalid_json", "Invalid JSON body passed.")
        return body

    def _create(self, request: Request, php: PhpInput) -> Response:
        coll = self._resource(request)
        body = self._body(request)
        self._route_checks(coll.name, body, creating=True)
        record = self.write_create(coll.name, body)
        location = f"{request.scheme}://{request.host}{PREFIX}/{coll.name}/{record['id']}"
        return Response.json(record, 201, [("location", location)])

    def _update(self, request: Request, php: PhpInput) -> Response:
        coll = self._resource(request)
        rid = self._record_id(request, coll, method="PUT")
        body = self._body(request)
        self._route_checks(coll.name, body, creating=False)
        return Response.json(self.write_update(coll.name, rid, body))

    def _delete(self, request: Request, php: PhpInput) -> Response:
        coll = self._resource(request)
        rid = self._record_id(request, coll, method="DELETE")
        force = (php.text("force") or "").lower() in ("1", "true")
        if coll.name == "customers" and not force:
            raise ApiError(501, "woocommerce_rest_trash_not_supported", "Customers do not support trashing.")
        if not force and coll.statuses.get(rid) == "trash":
            raise ApiError(410, "woocommerce_rest_already_trashed", "The resource has already been deleted.")
        return Response.json(self.delete(coll.name, rid, force=force))

    def _batch_update(self, coll: WooCollection, item: Any) -> dict[str, Any]:
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

    def _batch_delete(self, coll: WooCollection, raw: Any) -> dict[str, Any]:
        rid = int(raw) if str(raw).isdigit() else 0
        if rid in coll.docs:
            return self.delete(coll.name, rid, force=True)  # a batch always deletes with force=true
        if coll.name == "customers":
            return ApiError(400, "woocommerce_rest_invalid_id", "Invalid resource id.").batch_item(rid)
        return ApiError(404, f"woocommerce_rest_{POST_TYPES[coll.name]}_invalid_id", "Invalid ID.").batch_item(rid)

    def _batch(self, request: Request, php: PhpInput) -> Response:
        """`batch_items`: create_item/update_item/delete_item called directly, one item after the other,
        no transaction; 200 whatever failed, a failed create as id 0, a failed update with its id."""
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
