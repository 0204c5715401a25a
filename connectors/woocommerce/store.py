"""The simulated WooCommerce data layer: the tables, the records as WooCommerce makes them, and the
writes as the REST controllers and data stores make them (API_FACTS_WRITES §A.2-A.5).

`create`/`update`/`delete` (RecordSimulator) are the tests' unchecked helpers: they store what they
are given.  The REST routes and the batch route go through `write_create`/`write_update`, which
check what the controller's create_item/update_item and the data layer check (the batch route
skips only the route's argument validation, done in the simulator's handlers).

Records are kept as serialized JSON plus small sort indexes, so 100,000 customers cost ~1.3 KB
each and a list page is a join of cached bytes.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

import orjson

from freshd.connectors.simcollection import Collection, RecordSimulator
from freshd.connectors.woocommerce.php import SITE_TZ, ApiError, wp_date

PREFIX = "/wp-json/wc/v3"
RESOURCES = ("customers", "orders", "products")
ORDER_STATUSES = ("pending", "processing", "on-hold", "completed", "cancelled", "refunded", "failed")
UNIQUE_KEYS = {"customers": "email", "products": "sku"}  # what the data layer keeps unique
POST_TYPES = {"customers": "customer", "orders": "shop_order", "products": "product"}  # error codes use these


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


class WooCollection(Collection):
    """One WooCommerce table, with the columns listings sort and filter on."""

    def __init__(self, name: str) -> None:
        super().__init__(name, "date_modified_gmt")
        self.sort_names: dict[int, str] = {}
        self.statuses: dict[int, str] = {}
        self.roles: dict[int, str] = {}  # customers: the WordPress role
        # the natural key a store keeps unique (customers: email, products: SKU), casefolded -> id
        self.unique: dict[str, int] = {}
        self.unique_of: dict[int, str] = {}

    @property
    def by_id(self) -> list[int]:
        return self.ids

    def encode(self, record: dict[str, Any]) -> bytes:
        return orjson.dumps(record)

    def get(self, rid: int) -> dict[str, Any]:
        return orjson.loads(self.docs[rid])  # type: ignore[no-any-return]

    def put(self, record: dict[str, Any]) -> None:
        super().put(record)
        rid = int(record["id"])
        self.sort_names[rid] = str(record.get("last_name") or record.get("name") or "").lower()
        self.statuses[rid] = str(record.get("status", ""))
        if "role" in record:
            self.roles[rid] = str(record["role"])
        self._index_key(rid, record.get(UNIQUE_KEYS.get(self.name, "")))

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
        super().remove(rid)
        self.sort_names.pop(rid, None)
        self.statuses.pop(rid, None)
        self.roles.pop(rid, None)
        self._index_key(rid, None)


class WooStore(RecordSimulator):
    """The records and the data layer's writes (WooCommerceSimulator is one)."""

    collections: dict[str, WooCollection]  # type: ignore[assignment]
    _next_meta_id: int  # meta_data row ids (wp_postmeta.meta_id / umeta_id)

    def _dates(self, prefix: str, moment: datetime) -> dict[str, str]:
        return {prefix: wp_date(moment.astimezone(SITE_TZ)), f"{prefix}_gmt": wp_date(moment)}

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

    def _touched(self, name: str, moment: datetime) -> dict[str, Any]:
        return self._dates("date_modified", moment)

    def counts(self) -> dict[str, int]:
        return {name: len(c.docs) for name, c in self.collections.items()}

    def get(self, resource: str, rid: int) -> dict[str, Any]:
        return self.collections[resource].get(rid)
    def delete(self, resource: str, rid: int, *, force: bool = False) -> dict[str, Any]:
        """Customers are removed; orders and products go to the trash unless forced.  Returns the
        record as it was *before* (the REST response is built first, API_FACTS_WRITES §A.2)."""
        record = self.collections[resource].get(rid)
        if force or resource == "customers":
            self.collections[resource].remove(rid)
            return record
        self.update(resource, rid, status="trash")
        return record

    @staticmethod
    def _route_checks(resource: str, body: dict[str, Any], *, creating: bool) -> None:
        """What the single-record routes validate before the controller runs (the batch route skips it)."""
        if resource == "customers" and creating and not body.get("email"):
            raise ApiError(400, "rest_missing_callback_param", "Missing parameter(s): email", params=["email"])
        if resource == "customers" and not creating and "email" in body and not _is_email(body["email"]):
            # the v2/v3 schema's `format: email` (UNCONFIRMED: API_FACTS_WRITES §A.3)
            raise ApiError.invalid_param("email", "Invalid email address.")

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
                raise ApiError.invalid_param("line_items", "line_items[0] is not of type object.")
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
