"""An Odoo simulator: the external API over JSON-RPC (`/jsonrpc`) and JSON-2 (`/json/2/<model>/<method>`).

Faithful to what a client sees (API_FACTS §3):

* ``POST /jsonrpc`` with ``{"jsonrpc": "2.0", "method": "call", "params": {"service", "method", "args"}, "id"}``:
  ``common.version()``, ``common.authenticate(db, login, key, {})`` (the uid, or ``false``),
  ``common.login(db, login, key)``, and ``object.execute_kw(db, uid, key, model, method, args,
  kwargs)``, stateless (credentials on every call).  Errors come back with HTTP **200** and
  ``{"error": {"code": 200, "message": "Odoo Server Error", "data": {"name":
  "odoo.exceptions.AccessDenied", "message", "arguments", "context", "debug"}}}``.
* ``POST /json/2/<model>/<method>`` (Odoo 19): ``Authorization: bearer <API key>``, optional
  ``X-Odoo-Database``, named parameters in the body; errors are HTTP 4xx/5xx with
  ``{name, message, arguments, context, debug}`` (401 "Invalid apikey", 422 for an unknown
  parameter).  ``GET /web/version``.
* Models ``res.partner``, ``sale.order``, ``product.product`` with the usual fields; many2one
  values as ``[id, "display name"]``; datetimes as naive UTC ``"YYYY-MM-DD HH:MM:SS"``;
  ``write_date`` moves on every change.  Methods: ``search_read``, ``search``,
  ``search_count``, ``read``, ``fields_get``.  Domains in prefix notation (``&``, ``|``, ``!``;
  ``=``, ``!=``, ``>``, ``>=``, ``<``, ``<=``, ``in``, ``not in``, ``ilike``); ``order`` as
  ``"field [asc|desc], ..."``; ``offset``/``limit``; archived records (``active = False``) hidden
  unless ``context.active_test`` is false or the domain names ``active``.
* What the public clients need (odoorpc, odoo-client-lib): ``POST /web/webclient/version_info``,
  ``object.execute(db, uid, key, model, method, *args)``, ``res.users.context_get``, ``fields_get``
  with Odoo's field types (``relation`` on many2one, ``selection`` choices), ``load`` on ``read``.

Writes (API_FACTS_WRITES B): ``create`` (one dict -> an int over RPC; JSON-2 always ``[ids]``, 422
when ids are sent), ``write``, ``unlink``, ``load`` with external ids (``ir.model.data``), one
transaction per call, Odoo's error texts; see "the ORM: writes" and docs/connectors/odoo.md.

Known deviations: one database; access rights are "the right key" plus `forbidden`; ``ilike`` is a
plain case-insensitive substring; unknown fields in ``fields`` are ignored rather than refused.

Lists scan a (write_date, id) or id index from the domain's lower bound on its leading field,
so keyset paging over 100,000 records stays cheap.
"""

from __future__ import annotations

import bisect
import secrets
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import trio

from freshd.connectors.simcollection import random_churn
from freshd.connectors.simulator import FakeData, Request, Response, SimulatorApp

UID = 2  # the API user's id (1 is OdooBot/superuser)
MODELS = ("res.partner", "sale.order", "product.product")  # seeded, synced by the connector
AUX_MODELS = ("res.country", "sale.order.line", "ir.model.data")  # served alongside (writes: see §writes)
ORM_WRITES = ("create", "write", "unlink", "load")
# a few countries with their ISO code, readable with search_read on res.country (ids are the simulator's)
COUNTRIES = ((20, "BE", "Belgium"), (57, "DE", "Germany"), (68, "ES", "Spain"), (75, "FR", "France"),
             (109, "IT", "Italy"), (165, "NL", "Netherlands"), (222, "GB", "United Kingdom"),
             (233, "US", "United States"))
COUNTRY_IDS = {code: cid for cid, code, _ in COUNTRIES}
# many2one targets that are not served as models: the ids that exist there
FIXED_RELATIONS = {"res.users": {UID: "API User"}, "res.currency": {1: "EUR"}, "product.category": {1: "All"},
                   "uom.uom": {1: "Units"}}
# the model's description, as Odoo's error texts name it
DESCRIPTIONS = {"res.partner": "Contact", "sale.order": "Sales Order", "product.product": "Product",
                "sale.order.line": "Sales Order Line", "res.country": "Country", "ir.model.data": "Model Data"}
ORDER_STATES = ("draft", "sent", "sale", "done", "cancel")
SERVER_VERSION = "19.0"
USER_CONTEXT = {"lang": "en_US", "tz": "Europe/Brussels", "uid": UID}  # res.users.context_get()


# JSON-2's status for an exception (B.2: `http_status` of odoo/exceptions.py; ValueError: the simulator's
# choice, UNCONFIRMED); anything else is 500
JSON2_STATUS = {"odoo.exceptions.AccessError": 403, "odoo.exceptions.AccessDenied": 403,
                "odoo.exceptions.UserError": 422, "odoo.exceptions.ValidationError": 422,
                "odoo.exceptions.MissingError": 404, "odoo.exceptions.LockError": 409, "builtins.ValueError": 422}


def _f(kind: str, label: str, **more: Any) -> dict[str, Any]:
    return {"type": kind, "string": label, **more}


def _m2o(label: str, relation: str) -> dict[str, Any]:
    return {"type": "many2one", "string": label, "relation": relation}


def _sel(label: str, *choices: tuple[str, str]) -> dict[str, Any]:
    return {"type": "selection", "string": label, "selection": [list(c) for c in choices]}


_LOG_ACCESS = {"id": _f("integer", "ID", readonly=True), "display_name": _f("char", "Display Name", readonly=True,
                                                                            store=False),
               "create_date": _f("datetime", "Created on", readonly=True),
               "create_uid": _m2o("Created by", "res.users") | {"readonly": True},
               "write_date": _f("datetime", "Last Updated on", readonly=True),
               "write_uid": _m2o("Last Updated by", "res.users") | {"readonly": True}}
# fields_get: every field the simulator's records carry, typed as Odoo types them (many2one with
# its relation, selection with its choices); other attributes default in `_describe`.
FIELDS: dict[str, dict[str, dict[str, Any]]] = {
    "res.partner": {
        **_LOG_ACCESS, "name": _f("char", "Name"), "is_company": _f("boolean", "Is a Company"),
        "active": _f("boolean", "Active"), "email": _f("char", "Email"), "phone": _f("char", "Phone"),
        "street": _f("char", "Street"), "city": _f("char", "City"), "zip": _f("char", "Zip"),
        "country_id": _m2o("Country", "res.country"), "parent_id": _m2o("Related Company", "res.partner"),
        "lang": _sel("Language", ("en_US", "English (US)"), ("fr_FR", "French / Français")),
        "vat": _f("char", "Tax ID"), "ref": _f("char", "Reference"),
        "customer_rank": _f("integer", "Customer Rank"), "supplier_rank": _f("integer", "Supplier Rank"),
        "comment": _f("html", "Notes"),
    },
    "sale.order": {
        **_LOG_ACCESS, "name": _f("char", "Order Reference", required=True),
        "partner_id": _m2o("Customer", "res.partner") | {"required": True},
        "date_order": _f("datetime", "Order Date", required=True),
        "state": _sel("Status", ("draft", "Quotation"), ("sent", "Quotation Sent"), ("sale", "Sales Order"),
                      ("done", "Locked"), ("cancel", "Cancelled")) | {"readonly": True},
        "amount_untaxed": _f("monetary", "Untaxed Amount", readonly=True, currency_field="currency_id"),
        "amount_tax": _f("monetary", "Taxes", readonly=True, currency_field="currency_id"),
        "amount_total": _f("monetary", "Total", readonly=True, currency_field="currency_id"),
        "currency_id": _m2o("Currency", "res.currency"), "user_id": _m2o("Salesperson", "res.users"),
        "client_order_ref": _f("char", "Customer Reference"),
        "invoice_status": _sel("Invoice Status", ("upselling", "Upselling Opportunity"),
                               ("invoiced", "Fully Invoiced"), ("to invoice", "To Invoice"),
                               ("no", "Nothing to Invoice")) | {"readonly": True},
        "note": _f("html", "Terms and conditions"), "origin": _f("char", "Source Document"),
        "order_line": {"type": "one2many", "string": "Order Lines", "relation": "sale.order.line",
                       "relation_field": "order_id"},
    },
    "product.product": {
        **_LOG_ACCESS, "name": _f("char", "Name", required=True), "default_code": _f("char", "Internal Reference"),
        "barcode": _f("char", "Barcode"), "list_price": _f("float", "Sales Price"),
        "standard_price": _f("float", "Cost"), "active": _f("boolean", "Active"),
        "type": _sel("Product Type", ("consu", "Goods"), ("service", "Service"), ("combo", "Combo")),
        "product_tmpl_id": _m2o("Product Template", "product.template") | {"required": True},
        "categ_id": _m2o("Product Category", "product.category"), "uom_id": _m2o("Unit", "uom.uom"),
        "qty_available": _f("float", "Quantity On Hand", readonly=True),
        "description_sale": _f("text", "Sales Description"),
    },
    "res.country": {**_LOG_ACCESS, "name": _f("char", "Country Name", required=True),
                    "code": _f("char", "Country Code")},
    "sale.order.line": {
        **_LOG_ACCESS, "order_id": _m2o("Order Reference", "sale.order") | {"required": True},
        "name": _f("text", "Description"), "product_id": _m2o("Product", "product.product"),
        "product_uom_qty": _f("float", "Quantity"), "price_unit": _f("float", "Unit Price"),
        "price_subtotal": _f("monetary", "Subtotal", readonly=True, currency_field="currency_id"),
    },
    "ir.model.data": {
        **_LOG_ACCESS, "name": _f("char", "External Identifier", required=True),
        "module": _f("char", "Module", required=True), "model": _f("char", "Model Name", required=True),
        "res_id": {"type": "many2one_reference", "string": "Record ID", "model_field": "model"},
        "complete_name": _f("char", "Complete ID", readonly=True, store=False),
        "noupdate": _f("boolean", "Non Updatable"),
    },
}
# written values Odoo drops: the log-access columns (stripped, B.5) and computed fields without an
# inverse (their value is recomputed; the write changes nothing)
MAGIC = frozenset({"id", "create_date", "create_uid", "write_date", "write_uid", "display_name"})
COMPUTED = {"sale.order": frozenset({"amount_untaxed", "amount_tax", "amount_total", "invoice_status"}),
            "product.product": frozenset({"qty_available", "product_tmpl_id"}),
            "sale.order.line": frozenset({"price_subtotal"})}


def _fmt(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


class OdooError(Exception):
    """An Odoo exception as the server serializes it (`name` is module.Class)."""

    def __init__(self, name: str, message: str, *, status: int = 200, code: int = 200,
                 load_message: str | None = None) -> None:
        super().__init__(message)
        self.name, self.message, self.status, self.code = name, message, status, code
        self.load_message = load_message  # how `load` reports it in `messages` (SQL errors read differently)

    def data(self) -> dict[str, Any]:
        return {"name": self.name, "message": self.message, "arguments": [self.message], "context": {},
                "debug": f"Traceback (most recent call last):\n  ...\n{self.name}: {self.message}\n"}


def error_body(status: int, code: str, message: str) -> Response:
    """Errors outside the RPC layer (faults, unknown routes): werkzeug-style JSON."""
    name = {404: "werkzeug.exceptions.NotFound", 429: "werkzeug.exceptions.TooManyRequests"}.get(
        status, "werkzeug.exceptions.InternalServerError" if status >= 500 else "werkzeug.exceptions.BadRequest")
    return Response.json({"name": name, "message": message, "arguments": [message], "context": {},
                          "debug": ""}, status)


# --- domains ------------------------------------------------------------------------------------------


def _term_ok(record: dict[str, Any], term: list[Any]) -> bool:
    field, op, value = term
    have = record.get(field)
    if isinstance(have, list) and len(have) == 2 and isinstance(have[0], int):
        have = have[0]  # many2one compares by id
    if have is False:
        have = None if op not in ("=", "!=") else have
    match op:
        case "=":
            return bool(have == value or (value is False and have in (None, False)))
        case "!=":
            return bool(have != value)
        case ">" | ">=" | "<" | "<=":
            if have is None or value is None or value is False:
                return False
            if op == ">":
                return bool(have > value)
            if op == ">=":
                return bool(have >= value)
            return bool(have < value) if op == "<" else bool(have <= value)
        case "in":
            return have in value
        case "not in":
            return have not in value
        case "ilike":
            return isinstance(have, str) and str(value).lower() in have.lower()
    raise OdooError("builtins.ValueError", f"Invalid leaf {term!r}")


def _parse(domain: list[Any], pos: int = 0) -> tuple[Any, int]:
    """Prefix notation -> a tree ("&"|"|", a, b) / ("!", a) / term; implicit "&" between top-level items."""
    item = domain[pos]
    if item in ("&", "|"):
        left, pos = _parse(domain, pos + 1)
        right, pos = _parse(domain, pos)
        return (item, left, right), pos
    if item == "!":
        inner, pos = _parse(domain, pos + 1)
        return ("!", inner), pos
    if not isinstance(item, list | tuple) or len(item) != 3:
        raise OdooError("builtins.ValueError", f"Invalid domain term {item!r}")
    return list(item), pos + 1


def parse_domain(domain: Any) -> Any:
    if not isinstance(domain, list):
        raise OdooError("builtins.ValueError", f"Invalid domain {domain!r}")
    if not domain:
        return None
    trees, pos = [], 0
    while pos < len(domain):
        tree, pos = _parse(domain, pos)
        trees.append(tree)
    tree = trees[0]
    for more in trees[1:]:
        tree = ("&", tree, more)
    return tree


def matches(tree: Any, record: dict[str, Any]) -> bool:
    if tree is None:
        return True
    if isinstance(tree, tuple):
        if tree[0] == "&":
            return matches(tree[1], record) and matches(tree[2], record)
        if tree[0] == "|":
            return matches(tree[1], record) or matches(tree[2], record)
        return not matches(tree[1], record)
    return _term_ok(record, tree)


def lower_bound(tree: Any, field: str) -> Any:
    """A value every matching record's `field` is >= to (None: no bound), for index scans."""
    if tree is None:
        return None
    if isinstance(tree, tuple):
        if tree[0] == "&":
            bounds = [b for b in (lower_bound(tree[1], field), lower_bound(tree[2], field)) if b is not None]
            return max(bounds) if bounds else None
        if tree[0] == "|":
            left, right = lower_bound(tree[1], field), lower_bound(tree[2], field)
            return None if left is None or right is None else min(left, right)
        return None
    name, op, value = tree
    return value if name == field and op in (">", ">=", "=") and value not in (None, False) else None


def mentions(tree: Any, field: str) -> bool:
    if tree is None:
        return False
    if isinstance(tree, tuple):
        return any(mentions(t, field) for t in tree[1:])
    return bool(tree[0] == field)


# --- the simulator --------------------------------------------------------------------------------------


class OdooSimulator:
    def __init__(
        self,
        records: int = 100,
        seed: int = 1,
        credentials: dict[str, str] | None = None,
        *,
        clock: Callable[[], datetime] | None = None,
        unique_default_code: bool = False,
    ) -> None:
        creds = credentials or {}
        self.database = creds.get("database", "demo")
        self.login = creds.get("username", "api@example.com")
        self.api_key = creds.get("api_key") or creds.get("password") or "odoo-demo-key"
        self.clock = clock or (lambda: datetime.now(UTC))
        self.fake = FakeData(seed)
        self.token_requests = 0  # API keys: no token endpoint
        self.docs: dict[str, dict[int, dict[str, Any]]] = {m: {} for m in (*MODELS, *AUX_MODELS)}
        self.by_write: dict[str, list[tuple[str, int]]] = {m: [] for m in self.docs}
        self.ids: dict[str, list[int]] = {m: [] for m in self.docs}
        self.next_id = dict.fromkeys(self.docs, 1)
        self._last: dict[str, list[dict[str, Any]]] = {}  # the loop fault replays these
        # writes (see "the ORM: writes"): the OCA product_default_code_unique constraint, opt in
        self.unique_default_code = unique_default_code
        self.forbidden: set[tuple[str, str]] = set()  # (model, "create"|"write"|"unlink"): AccessError
        self.lose_answers = 0  # the next N ORM writes are applied, then never answered (the client times out)
        self._journal: list[tuple[str, int, dict[str, Any] | None]] | None = None  # undo log of one call
        for cid, code, name in COUNTRIES:
            self._put("res.country", {"id": cid, "name": name, "display_name": name, "code": code,
                                      "create_date": "2024-01-01 00:00:00", "write_date": "2024-01-01 00:00:00",
                                      "create_uid": [1, "OdooBot"], "write_uid": [1, "OdooBot"]})
        self._seed({"res.partner": records, "sale.order": records, "product.product": max(records // 10, 1)})
        self.app = SimulatorApp(error_body)
        self.app.route("POST", "/jsonrpc", self._jsonrpc)
        self.app.route("POST", "/web/webclient/version_info", self._webclient_version_info)
        self.app.route("POST", "/json/2/{model}/{method}", self._json2)
        self.app.route("GET", "/web/version", self._version)

    # --- data ------------------------------------------------------------------------------------

    def _now(self) -> datetime:
        return self.clock().astimezone(UTC).replace(microsecond=0)

    def _put(self, model: str, record: dict[str, Any]) -> None:
        rid = record["id"]
        old = self.docs[model].get(rid)
        if self._journal is not None:
            self._journal.append((model, rid, old))
        if old is not None:
            self.by_write[model].remove((old["write_date"], rid))
        else:
            bisect.insort(self.ids[model], rid)
        self.docs[model][rid] = record
        bisect.insort(self.by_write[model], (record["write_date"], rid))
        self.next_id[model] = max(self.next_id[model], rid + 1)

    def _seed(self, counts: dict[str, int]) -> None:
        now = self._now()
        start = now - timedelta(days=365)
        for model in MODELS:
            step = timedelta(days=360) / max(counts[model], 1)
            for i in range(counts[model]):
                created = start + step * i
                written = min(created + timedelta(seconds=self.fake.rng.randint(0, 20 * 86400)),
                              now - timedelta(minutes=1))
                self._put(model, self._make(model, self.next_id[model], created, written))

    def _partner_name(self, pid: int) -> str:
        partner = self.docs["res.partner"].get(pid)
        return str(partner["name"]) if partner else f"Partner {pid}"

    def _make(self, model: str, rid: int, created: datetime, written: datetime) -> dict[str, Any]:
        rng = self.fake.rng
        common = {"id": rid, "create_date": _fmt(created), "write_date": _fmt(written),
                  "create_uid": [UID, "API User"], "write_uid": [UID, "API User"]}
        if model == "res.partner":
            first, last = self.fake.person()
            company = rng.random() < 0.2
            city, country, zipcode = rng.choice(FakeData.CITIES)
            name = f"{last} {rng.choice(['SA', 'GmbH', 'Ltd', 'Inc'])}" if company else f"{first} {last}"
            return {**common, "name": name, "display_name": name, "is_company": company, "active": True,
                    "email": f"{first}.{last}.{rid}@example.com".lower(), "phone": f"+33 1 {rng.randint(10, 99)} "
                    f"{rng.randint(10, 99)} {rng.randint(10, 99)} {rng.randint(10, 99)}",
                    "street": f"{rng.randint(1, 200)} Main St", "city": city, "zip": zipcode,
                    "country_id": self._m2o_value("res.country", COUNTRY_IDS[country]), "parent_id": False,
                    "lang": "en_US", "vat": False, "ref": f"C{rid:06d}", "customer_rank": rng.randint(0, 9),
                    "supplier_rank": 0, "comment": "<p>Imported from the simulator.</p>"}
        if model == "sale.order":
            pid = rng.randint(1, max(1, self.next_id["res.partner"] - 1))
            amount = round(rng.uniform(10, 2000), 2)
            return {**common, "name": f"S{rid:05d}", "display_name": f"S{rid:05d}",
                    "partner_id": [pid, self._partner_name(pid)], "date_order": _fmt(created),
                    "state": rng.choice(ORDER_STATES), "amount_untaxed": round(amount / 1.2, 2),
                    "amount_tax": round(amount - amount / 1.2, 2), "amount_total": amount,
                    "currency_id": [1, "EUR"], "user_id": [UID, "API User"], "client_order_ref": False,
                    "invoice_status": rng.choice(["no", "to invoice", "invoiced"]), "note": "<p></p>",
                    "origin": False, "order_line": []}
        name = self.fake.product_name()
        price = float(self.fake.price())
        return {**common, "name": name, "display_name": f"[P{rid:05d}] {name}", "default_code": f"P{rid:05d}",
                "barcode": f"{rng.randint(10**12, 10**13 - 1)}", "list_price": price,
                "standard_price": round(price * 0.6, 2), "active": True, "type": "consu",
                "product_tmpl_id": [rid, name], "categ_id": [1, "All"], "uom_id": [1, "Units"],
                "qty_available": rng.randint(0, 500), "description_sale": False}

    # --- the test contract (tests/rig.py) ----------------------------------------------------------

    ENTITY_MODELS = {"partners": "res.partner", "sale_orders": "sale.order", "products": "product.product"}

    def _model(self, entity: str) -> str:
        return self.ENTITY_MODELS.get(entity, entity)

    def count(self, entity: str) -> int:
        return len(self.docs[self._model(entity)])  # archived records are synced too (active: false)

    def create(self, model: str, **fields: Any) -> dict[str, Any]:
        now = self._now()
        record = {**self._make(model, self.next_id[model], now, now), **fields}
        self._put(model, record)
        return record

    def write(self, model: str, rid: int, **fields: Any) -> dict[str, Any]:
        record = {**self.docs[model][rid], **fields, "write_date": _fmt(self._now())}
        self._put(model, record)
        return record

    def unlink(self, model: str, rid: int) -> None:
        record = self.docs[model].pop(rid)
        self.by_write[model].remove((record["write_date"], rid))
        self.ids[model].remove(rid)
        if self._journal is not None:
            self._journal.append((model, rid, record))

    def mutate(self, entity: str) -> dict[str, str | None]:
        model = self._model(entity)
        ids = self.ids[model]
        updated, deleted = ids[0], ids[-1]
        field = {"res.partner": "phone", "sale.order": "client_order_ref",
                 "product.product": "description_sale"}[model]
        self.write(model, updated, **{field: f"changed {self._now().isoformat()}"})
        self.unlink(model, deleted)
        created = self.create(model)
        return {"created": str(created["id"]), "updated": str(updated), "deleted": str(deleted)}

    def corrupt(self, entity: str) -> str:
        model = self._model(entity)
        rid = self.ids[model][len(self.ids[model]) // 2]
        self.write(model, rid, name="bad\u0000byte")
        return str(rid)

    def random_changes(self, count: int) -> dict[str, int]:
        rng = self.fake.rng

        def update(model: str, rid: int) -> None:
            if model == "sale.order":
                self.write(model, rid, state=rng.choice(ORDER_STATES))
            elif model == "res.partner":
                self.write(model, rid, active=rng.random() > 0.1)
            else:
                self.write(model, rid, qty_available=rng.randint(0, 500))

        return random_churn(rng, count, MODELS, ids=lambda m: self.ids[m], create=self.create, update=update,
                            delete=self.unlink)

    # --- the ORM ------------------------------------------------------------------------------------

    def _scan(self, model: str, tree: Any, order: str) -> Iterator[dict[str, Any]]:
        """Records in `order`, starting at the domain's lower bound when the index allows."""
        docs = self.docs[model]
        keys = [part.strip().split() for part in order.split(",") if part.strip()] or [["id"]]
        spec = [(k[0], (k[1].lower() if len(k) > 1 else "asc")) for k in keys]
        if spec == [("write_date", "asc"), ("id", "asc")]:
            index = self.by_write[model]
            bound = lower_bound(tree, "write_date")
            start = bisect.bisect_left(index, (bound, -1)) if bound is not None else 0
            return (docs[rid] for _, rid in index[start:])
        if spec == [("id", "asc")]:
            bound = lower_bound(tree, "id")
            ids = self.ids[model]
            start = bisect.bisect_left(ids, bound) if isinstance(bound, int) else 0
            return (docs[rid] for rid in ids[start:])
        for _name, direction in spec:
            if direction not in ("asc", "desc"):
                raise OdooError("builtins.ValueError", f"Invalid order {order!r}")
        rows = list(docs.values())
        for name, direction in reversed(spec):
            rows.sort(key=lambda r, n=name: (r.get(n) is None or r.get(n) is False, r.get(n) or ""),  # type: ignore[misc]
                      reverse=direction == "desc")
        return iter(rows)

    def _select(self, model: str, domain: Any, *, offset: int, limit: int | None, order: str,
                context: dict[str, Any]) -> Iterable[dict[str, Any]]:
        if model not in self.docs:
            raise OdooError("builtins.KeyError", repr(model))
        tree = parse_domain(domain)
        active_test = context.get("active_test", True) and not mentions(tree, "active")
        found = 0
        for record in self._scan(model, tree, order or "id asc"):
            if active_test and record.get("active") is False:
                continue
            if not matches(tree, record):
                continue
            found += 1
            if found <= offset:
                continue
            yield record
            if limit is not None and found - offset >= limit:
                return

    @staticmethod
    def _fields(record: dict[str, Any], fields: list[str] | None, load: Any = "_classic_read") -> dict[str, Any]:
        row = dict(record) if not fields else {"id": record["id"], **{f: record[f] for f in fields if f in record}}
        if load != "_classic_read":  # `load=False` / "_classic_write": a many2one is its id alone
            row = {k: v[0] if isinstance(v, list) and len(v) == 2 and isinstance(v[0], int) else v
                   for k, v in row.items()}
        return row

    @staticmethod
    def fields_get(model: str, allfields: list[str] | None = None,
                   attributes: list[str] | None = None) -> dict[str, dict[str, Any]]:
        """`fields_get`: each field's description, `type` always, `relation` on relational fields."""
        if model not in FIELDS:
            raise OdooError("builtins.KeyError", repr(model))
        out = {}
        for name, spec in FIELDS[model].items():
            if allfields and name not in allfields:
                continue
            full = {"name": name, "help": "", "readonly": False, "required": False, "store": True,
                    "searchable": True, "sortable": spec.get("store", True), "manual": False, **spec}
            out[name] = {k: v for k, v in full.items() if not attributes or k in attributes}
        return out

    # --- the ORM: writes -------------------------------------------------------------------------------
    #
    # One call is one transaction: every change goes to an undo journal, and an error rolls the whole
    # call back (ids drawn stay drawn, as PostgreSQL sequences do).  write_date is the call's start
    # for every record it touches (B.5).  Constraints and their texts follow B.3/B.4.

    def _m2o_value(self, model: str, rid: int) -> list[Any]:
        if model in FIXED_RELATIONS:
            return [rid, FIXED_RELATIONS[model][rid]]
        return [rid, self.docs[model][rid]["display_name"]]

    def _exists(self, model: str, rid: int) -> bool:
        if model in FIXED_RELATIONS:
            return rid in FIXED_RELATIONS[model]
        return model in self.docs and rid in self.docs[model]

    def _allow(self, model: str, operation: str) -> None:
        verb = {"create": "create", "write": "modify", "unlink": "delete"}[operation]
        if (model, operation) in self.forbidden or model in ("res.country", "ir.model.data"):
            raise OdooError("odoo.exceptions.AccessError",
                            f"You are not allowed to {verb} '{DESCRIPTIONS.get(model, model)}' ({model}) records."
                            "\n\nThis operation is allowed for the following groups:\n\t- Administration/Settings"
                            "\n\nContact your administrator to request access if necessary.")

    def _convert(self, model: str, vals: Any) -> dict[str, Any]:
        """Written values -> stored ones: unknown fields refused, magic and computed ones dropped."""
        if not isinstance(vals, dict):
            raise OdooError("builtins.TypeError", f"expected a dict of values for {model}, got {vals!r}")
        spec = FIELDS[model]
        out: dict[str, Any] = {}
        for name, given in vals.items():
            field = spec.get(name)
            if field is None:
                raise OdooError("builtins.ValueError", f"Invalid field {name!r} on model {model!r}")
            if name in MAGIC or name in COMPUTED.get(model, ()):
                continue
            kind = field["type"]
            value = False if given is None else given
            if kind == "many2one":
                # an id; a JSON list (even [id, name] as read) is refused: Many2one takes a tuple only
                if value is False:
                    out[name] = False
                    continue
                if not isinstance(value, int) or isinstance(value, bool):
                    raise OdooError("builtins.ValueError", f"Wrong value for {model}.{name}: {value!r}")
                if not self._exists(field["relation"], value):
                    table = model.replace(".", "_")
                    raise OdooError(
                        "odoo.exceptions.ValidationError",
                        "The operation cannot be completed: another model requires the record being deleted. "
                        f"If possible, archive it instead.\n\nModel: {DESCRIPTIONS[model]} ({model})\n"
                        f"Constraint: {table}_{name}_fkey\n",
                        load_message=f'insert or update on table "{table}" violates foreign key constraint '
                                     f'"{table}_{name}_fkey"\nDETAIL:  Key ({name})=({value}) is not present in '
                                     f'table "{field["relation"].replace(".", "_")}".')
                out[name] = self._m2o_value(field["relation"], value)
            elif kind == "one2many":
                out[name] = value  # commands, applied by _apply_lines
            elif kind == "selection":
                if value is not False and value not in [c[0] for c in field["selection"]]:
                    raise OdooError("builtins.ValueError", f"Wrong value for {model}.{name}: {value!r}")
                out[name] = value
            elif kind == "boolean":
                out[name] = bool(value)
            elif kind in ("float", "monetary"):
                out[name] = float(value) if value is not False else 0.0
            elif kind == "integer":
                out[name] = int(value) if value is not False else 0
            else:
                out[name] = value if value is False or isinstance(value, str) else str(value)
        return out

    def _defaults(self, model: str, rid: int, now: str) -> dict[str, Any]:
        common = {"id": rid, "create_date": now, "write_date": now, "create_uid": [UID, "API User"],
                  "write_uid": [UID, "API User"]}
        if model == "res.partner":
            return {**common, "name": False, "is_company": False, "active": True, "email": False, "phone": False,
                    "street": False, "city": False, "zip": False, "country_id": False, "parent_id": False,
                    "lang": "en_US", "vat": False, "ref": False, "customer_rank": 0, "supplier_rank": 0,
                    "comment": False}
        if model == "product.product":
            return {**common, "name": False, "default_code": False, "barcode": False, "list_price": 1.0,
                    "standard_price": 0.0, "active": True, "type": "consu", "categ_id": [1, "All"],
                    "uom_id": [1, "Units"], "qty_available": 0.0, "description_sale": False}
        if model == "sale.order":
            return {**common, "name": f"S{rid:05d}", "partner_id": False, "date_order": now, "state": "draft",
                    "amount_untaxed": 0.0, "amount_tax": 0.0, "amount_total": 0.0, "currency_id": [1, "EUR"],
                    "user_id": [UID, "API User"], "client_order_ref": False, "origin": False,
                    "invoice_status": "no", "note": False, "order_line": []}
        return {**common, "order_id": False, "name": False, "product_id": False, "product_uom_qty": 1.0,
                "price_unit": None, "price_subtotal": 0.0}

    def _finish(self, model: str, record: dict[str, Any]) -> None:
        """Computed fields and constraints (B.3, B.4) of a record about to be stored."""
        if model == "res.partner" and not record.get("name"):
            raise OdooError("odoo.exceptions.ValidationError",
                            "The operation cannot be completed: Contacts require a name",
                            load_message="Contacts require a name")
        for name, field in FIELDS[model].items():
            if field.get("required") and name not in MAGIC and name not in COMPUTED.get(model, ()) \
                    and record.get(name) in (False, None, ""):
                table = "product_template" if model == "product.product" and name == "name" else \
                    model.replace(".", "_")
                raise OdooError(
                    "odoo.exceptions.ValidationError",
                    "The operation cannot be completed:\n- Create/update: a mandatory field is not set.\n"
                    "- Delete: another model requires the record being deleted. If possible, archive it instead."
                    f"\n\nModel: {DESCRIPTIONS[model]} ({model})\nField: {field['string']} ({name})\n",
                    load_message=f'null value in column "{name}" of relation "{table}" violates not-null '
                                 "constraint")
        if model == "product.product":
            code = record.get("default_code")
            others = [r for r in self.docs[model].values() if r["id"] != record["id"]]
            if self.unique_default_code and code and any(r.get("default_code") == code for r in others):
                raise OdooError("odoo.exceptions.ValidationError",
                                "The operation cannot be completed: Internal Reference must be unique across "
                                "the database!", load_message="Internal Reference must be unique across the "
                                "database!")
            barcode = record.get("barcode")
            holders = [r["name"] for r in others if barcode and r.get("barcode") == barcode]
            if holders:
                message = f'Barcode(s) already assigned:\n\n- Barcode "{barcode}" already assigned to product(s): ' \
                          + ", ".join(holders)
                raise OdooError("odoo.exceptions.ValidationError", message)
            record["display_name"] = f"[{code}] {record['name']}" if code else record["name"]
            record["product_tmpl_id"] = [record["id"], record["name"]]
        elif model == "sale.order.line":
            if record.get("price_unit") is None:
                product = record["product_id"] and self.docs["product.product"][record["product_id"][0]]
                record["price_unit"] = float(product["list_price"]) if product else 0.0
            if not record.get("name") and record["product_id"]:
                record["name"] = record["product_id"][1]
            record["price_subtotal"] = round(record["product_uom_qty"] * record["price_unit"], 2)
            record["display_name"] = f"{record['order_id'][1]} - {record['name'] or ''}"
        else:
            record["display_name"] = record.get("name") or False

    def _apply_lines(self, order: dict[str, Any], commands: Any, now: str) -> None:
        """sale.order.order_line x2many commands: (0, 0, vals) create, (1, id, vals) update, (2, id) delete,
        (5,) remove all; then the order's amounts (no taxes in the simulator)."""
        if not isinstance(commands, list):
            raise OdooError("builtins.ValueError", f"Wrong value for sale.order.order_line: {commands!r}")
        lines = list(order["order_line"])
        for command in commands:
            if not isinstance(command, list | tuple) or not command or command[0] not in (0, 1, 2, 5):
                raise OdooError("builtins.ValueError", f"Wrong value for sale.order.order_line: {command!r}")
            if command[0] == 0:
                lid = self.next_id["sale.order.line"]
                self.next_id["sale.order.line"] += 1
                vals = {**self._convert("sale.order.line", command[2]), "order_id": [order["id"], order["name"]]}
                line = {**self._defaults("sale.order.line", lid, now), **vals}
                self._finish("sale.order.line", line)
                self._put("sale.order.line", line)
                lines.append(lid)
            elif command[1] not in lines:
                raise OdooError("odoo.exceptions.MissingError", "Record does not exist or has been deleted.\n"
                                f"(Record: sale.order.line({command[1]},), User: {UID})")
            elif command[0] == 1:
                line = {**self.docs["sale.order.line"][command[1]],
                        **self._convert("sale.order.line", command[2]), "write_date": now}
                self._finish("sale.order.line", line)
                self._put("sale.order.line", line)
            else:
                drop = lines if command[0] == 5 else [command[1]]
                for lid in list(drop):
                    self.unlink("sale.order.line", lid)
                lines = [] if command[0] == 5 else [i for i in lines if i != command[1]]
        order["order_line"] = lines
        total = round(sum(self.docs["sale.order.line"][i]["price_subtotal"] for i in lines), 2)
        order.update(amount_untaxed=total, amount_tax=0.0, amount_total=total)

    def _insert(self, model: str, vals: Any, now: str) -> int:
        values = self._convert(model, vals)
        rid = self.next_id[model]
        self.next_id[model] += 1  # drawn even if the call is rolled back, as a sequence is
        lines = values.pop("order_line", None)
        record = {**self._defaults(model, rid, now), **values}
        self._finish(model, record)
        self._put(model, record)
        if lines is not None:
            self._apply_lines(record, lines, now)
        return rid

    def _update(self, model: str, ids: list[int], vals: Any, now: str) -> None:
        missing = [i for i in ids if i not in self.docs[model]]
        if missing:
            raise OdooError("odoo.exceptions.MissingError", "Record does not exist or has been deleted.\n"
                            f"(Record: {model}({', '.join(map(str, missing))},), User: {UID})")
        values = self._convert(model, vals)
        lines = values.pop("order_line", None)
        for rid in ids:
            record = {**self.docs[model][rid], **values, "write_date": now}  # bumped even if nothing changed
            self._finish(model, record)
            self._put(model, record)
            if lines is not None:
                self._apply_lines(record, lines, now)

    def _delete(self, model: str, ids: list[int]) -> None:
        for rid in ids:
            if rid not in self.docs[model]:
                continue  # "no need to warn about deleting an already deleted record" (B.7)
            record = self.docs[model][rid]
            if model == "sale.order" and record["state"] in ("sale", "done"):
                raise OdooError("odoo.exceptions.UserError", "You can not delete a sent quotation or a confirmed "
                                "sales order. You must first cancel it.")
            if model == "res.partner" and any(o["partner_id"] and o["partner_id"][0] == rid
                                              for o in self.docs["sale.order"].values()):
                raise OdooError("odoo.exceptions.ValidationError",
                                "The operation cannot be completed: another model requires the record being "
                                "deleted. If possible, archive it instead.\n\nModel: Sales Order (sale.order)\n"
                                "Constraint: sale_order_partner_id_fkey\n")
            for lid in record.get("order_line") or []:
                self.unlink("sale.order.line", lid)
            for xid in [x["id"] for x in self.docs["ir.model.data"].values()
                        if x["model"] == model and x["res_id"] == rid]:
                self.unlink("ir.model.data", xid)
            self.unlink(model, rid)

    def _rollback(self, mark: int) -> None:
        """Undo the journal back to `mark` (a failed call, or one row of `load`)."""
        journal, self._journal = self._journal, None
        assert journal is not None
        while len(journal) > mark:
            model, rid, old = journal.pop()
            if rid in self.docs[model]:
                self.unlink(model, rid)
            if old is not None:
                self._put(model, old)
        self._journal = journal

    def _load(self, model: str, fields: Any, data: Any, context: dict[str, Any], now: str) -> dict[str, Any]:
        """`load(fields, rows)`: import-format strings; `id` is an external id (module from the context's
        `module`, default `__import__`), created with its record or updating it; any row error rolls the
        whole call back (`ids: false`) and is reported in `messages`."""
        if not isinstance(fields, list) or not isinstance(data, list):
            raise OdooError("builtins.TypeError", "load() expects a list of fields and a list of rows")
        spec = FIELDS[model]
        for name in fields:
            base = str(name).split("/")[0]
            if base != "id" and base not in spec:
                raise OdooError("builtins.ValueError", f"Invalid field {base!r} on model {model!r}")
        module = str(context.get("module") or "__import__")
        messages: list[dict[str, Any]] = []
        ids: list[int] = []
        assert self._journal is not None
        for index, row in enumerate(data):
            mark = len(self._journal)
            try:
                values, xmlid = self._import_row(model, fields, row)
                self._allow(model, "create")
                ids.append(self._import_record(model, values, xmlid, module, now))
            except OdooError as exc:
                self._rollback(mark)
                messages.append({"type": "error", "message": exc.load_message or exc.message, "record": index,
                                 "rows": {"from": index, "to": index}})
        if messages:
            self._rollback(0)
            return {"ids": False, "messages": messages, "nextrow": 0}
        return {"ids": ids, "messages": [], "nextrow": 0}

    def _import_row(self, model: str, fields: list[Any], row: Any) -> tuple[dict[str, Any], str | None]:
        if not isinstance(row, list) or len(row) != len(fields):
            raise OdooError("builtins.ValueError", "a row must have one value per field")
        values: dict[str, Any] = {}
        xmlid = None
        for name, cell in zip(fields, row, strict=True):
            text = "" if cell is None or cell is False else str(cell)
            base, _, sub = str(name).partition("/")
            if base == "id":
                xmlid = text or None
                continue
            field = FIELDS[model][base]
            label = field["string"]
            if not text:
                values[base] = False
            elif field["type"] == "many2one":
                values[base] = self._import_m2o(field, label, sub, text)
            elif field["type"] == "boolean":
                values[base] = text.lower() in ("1", "true", "yes")
            elif field["type"] in ("float", "monetary", "integer"):
                try:
                    values[base] = int(text) if field["type"] == "integer" else float(text)
                except ValueError:
                    raise OdooError("builtins.ValueError", f"'{text}' does not seem to be a number for field "
                                    f"'{label}'") from None
            elif field["type"] == "selection":
                keys = {k: k for k, _ in field["selection"]} | {v: k for k, v in field["selection"]}
                if text not in keys:
                    raise OdooError("builtins.ValueError", f"Value '{text}' not found in selection field '{label}'")
                values[base] = keys[text]
            elif field["type"] in ("char", "text", "html"):
                values[base] = text
            else:
                raise OdooError("builtins.ValueError", f"cannot import field '{label}' of type {field['type']}")
        return values, xmlid

    def _import_m2o(self, field: dict[str, Any], label: str, sub: str, text: str) -> Any:
        relation = field["relation"]
        if sub == ".id":
            if not text.isdigit():
                raise OdooError("builtins.ValueError", f"Invalid database id '{text}' for the field '{label}'")
            return int(text)  # an id that does not exist fails in _convert, as the foreign key does
        if sub == "id":
            module, _, name = text.partition(".") if "." in text else ("__import__", "", text)
            found = [x["res_id"] for x in self.docs["ir.model.data"].values()
                     if (x["module"], x["name"], x["model"]) == (module, name, relation)]
        else:
            found = [r["id"] for r in self.docs.get(relation, {}).values() if r.get("display_name") == text
                     or r.get("name") == text or (relation == "res.country" and r.get("code") == text)]
        if not found:
            raise OdooError("builtins.ValueError", f"No matching record found for {'external id' if sub else 'name'}"
                            f" '{text}' in field '{label}'")
        return found[0]

    def _import_record(self, model: str, values: dict[str, Any], xmlid: str | None, module: str, now: str) -> int:
        if xmlid is None:
            return self._insert(model, values, now)
        module, _, name = xmlid.partition(".") if "." in xmlid else (module, "", xmlid)
        for entry in self.docs["ir.model.data"].values():
            if (entry["module"], entry["name"]) == (module, name):
                if entry["model"] != model or entry["res_id"] not in self.docs[model]:
                    break  # a dangling xmlid: Odoo replaces it with a new record
                self._update(model, [entry["res_id"]], values, now)
                return int(entry["res_id"])
        else:
            entry = None
        rid = self._insert(model, values, now)
        if entry is not None:
            self.unlink("ir.model.data", entry["id"])
        xid = self.next_id["ir.model.data"]
        self.next_id["ir.model.data"] += 1
        self._put("ir.model.data", {"id": xid, "module": module, "name": name, "model": model, "res_id": rid,
                                    "complete_name": f"{module}.{name}", "display_name": f"{module}.{name}",
                                    "noupdate": False, "create_date": now, "write_date": now,
                                    "create_uid": [UID, "API User"], "write_uid": [UID, "API User"]})
        return rid

    def _orm_write(self, model: str, method: str, params: dict[str, Any], context: dict[str, Any],
                   json2: bool) -> Any:
        """create / write / unlink / load, in one transaction."""
        if model not in self.docs:
            raise OdooError("builtins.KeyError", repr(model))
        now = _fmt(self._now())
        self._journal = []
        try:
            if method == "create":
                vals = params.get("vals_list")
                one = isinstance(vals, dict)
                self._allow(model, "create")
                ids = [self._insert(model, v, now) for v in ([vals] if one else vals or [])]
                result: Any = ids[0] if one and not json2 else ids  # B.1: RPC create({..}) is an int
            elif method in ("write", "unlink"):
                given = params.get("ids")
                ids = [given] if isinstance(given, int) else list(given or [])
                self._allow(model, method)
                if method == "write":
                    self._update(model, ids, params.get("vals"), now)
                else:
                    self._delete(model, ids)
                result = True
            else:
                result = self._load(model, params.get("fields"), params.get("data"), context, now)
        except BaseException:
            self._rollback(0)
            raise
        finally:
            self._journal = None
        return result

    def execute(self, model: str, method: str, args: list[Any], kwargs: dict[str, Any], *,
                json2: bool = False) -> Any:
        context = kwargs.get("context") or {}
        if model == "res.users" and method == "context_get":  # the one res.users method served
            return dict(USER_CONTEXT)
        allowed = {"search_read": {"domain", "fields", "offset", "limit", "order", "context", "load"},
                   "search": {"domain", "offset", "limit", "order", "context"},
                   "search_count": {"domain", "limit", "context"},
                   "read": {"ids", "fields", "context", "load"},
                   "fields_get": {"attributes", "allfields", "context"},
                   "create": {"vals_list", "context"}, "write": {"ids", "vals", "context"},
                   "unlink": {"ids", "context"}, "load": {"fields", "data", "context"}}.get(method)
        if allowed is None:
            raise OdooError("builtins.AttributeError",
                            f"The method '{method}' does not exist on the model '{model}'")
        unknown = set(kwargs) - allowed
        if unknown:
            raise OdooError("builtins.TypeError", f"{method}() got an unexpected keyword argument "
                            f"'{sorted(unknown)[0]}'", status=422)
        names = {"search_read": ["domain", "fields", "offset", "limit", "order"],
                 "search": ["domain", "offset", "limit", "order"], "search_count": ["domain"],
                 "read": ["ids", "fields", "load"], "fields_get": ["allfields", "attributes"],
                 "create": ["vals_list"], "write": ["ids", "vals"], "unlink": ["ids"], "load": ["fields", "data"],
                 }[method]
        params = dict(zip(names, args, strict=False)) | {k: v for k, v in kwargs.items() if k != "context"}
        if method in ORM_WRITES:
            return self._orm_write(model, method, params, context, json2)
        if method == "fields_get":
            return self.fields_get(model, params.get("allfields"), params.get("attributes"))
        load = params.get("load", "_classic_read")
        if method == "read":
            ids = params.get("ids") or []
            ids = [ids] if isinstance(ids, int) else ids
            return [self._fields(self.docs[model][i], params.get("fields"), load) for i in ids
                    if i in self.docs[model]]
        offset = int(params.get("offset") or 0)
        limit = params.get("limit")
        limit = int(limit) if limit not in (None, False, 0) else None
        selected = self._select(model, params.get("domain") or [], offset=0 if method == "search_count" else offset,
                                limit=None if method == "search_count" else limit,
                                order=str(params.get("order") or ""), context=context)
        if method == "search_count":
            return sum(1 for _ in selected)
        if method == "search":
            return [r["id"] for r in selected]
        rows = [self._fields(r, params.get("fields"), load) for r in selected]
        if self.app.faults.loop and rows:
            # the fault: whatever position was asked, the first page comes back again
            rows = self._last.setdefault(f"{model}/{method}", rows)
        return rows

    # --- JSON-RPC -------------------------------------------------------------------------------------

    def _rpc_reply(self, rid: Any, result: Any) -> Response:
        # "result" first, as Odoo writes it: clients may sniff it before parsing
        return Response(200, b'{"jsonrpc": "2.0", "id": ' + orjson.dumps(rid) + b', "result": '
                        + orjson.dumps(result) + b"}", [("content-type", "application/json")])

    def _rpc_error(self, rid: Any, exc: OdooError) -> Response:
        return Response.json({"jsonrpc": "2.0", "id": rid,
                              "error": {"code": exc.code, "message": "Odoo Server Error" if exc.code == 200 else
                                        exc.message, "data": exc.data()}})

    def _check(self, db: Any, uid: Any, key: Any) -> None:
        if db != self.database:
            raise OdooError("psycopg2.OperationalError", f'database "{db}" does not exist')
        if uid != UID or key != self.api_key:
            raise OdooError("odoo.exceptions.AccessDenied", "Access Denied")

    async def _jsonrpc(self, request: Request) -> Response:
        try:
            body = request.json()
        except ValueError:
            return self._rpc_error(None, OdooError("werkzeug.exceptions.BadRequest", "Invalid JSON data"))
        rid = body.get("id") if isinstance(body, dict) else None
        try:
            params = body.get("params") or {}
            service, method, args = params.get("service"), params.get("method"), params.get("args") or []
            if service == "common":
                if method == "version":
                    return self._rpc_reply(rid, self._version_info())
                if method in ("authenticate", "login"):
                    db, login, key = args[0], args[1], args[2]
                    ok = db == self.database and login == self.login and key == self.api_key
                    return self._rpc_reply(rid, UID if ok else False)
            if service == "object" and method == "execute":  # positional arguments only, an empty context
                if len(args) < 5:
                    raise OdooError("builtins.TypeError", "execute() missing required positional arguments")
                db, uid, key, model, orm_method = args[:5]
                self._check(db, uid, key)
                return self._rpc_reply(rid, self.execute(model, orm_method, list(args[5:]), {}))
            if service == "object" and method == "execute_kw":
                if len(args) < 6:
                    raise OdooError("builtins.TypeError", "execute_kw() missing required positional arguments")
                db, uid, key, model, orm_method, orm_args = args[:6]
                kwargs = args[6] if len(args) > 6 else {}
                self._check(db, uid, key)
                result = self.execute(model, orm_method, list(orm_args), dict(kwargs))
                await self._maybe_lose(orm_method)
                return self._rpc_reply(rid, result)
            raise OdooError("builtins.NameError", f"service {service!r} method {method!r} not found", code=404)
        except OdooError as exc:
            return self._rpc_error(rid, exc)
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            return self._rpc_error(rid, OdooError(f"builtins.{type(exc).__name__}", str(exc)))

    # --- JSON-2 -----------------------------------------------------------------------------------------

    async def _json2(self, request: Request) -> Response:
        try:
            auth = request.headers.get("authorization", "")
            scheme, _, key = auth.partition(" ")
            if scheme.lower() != "bearer" or key != self.api_key:
                raise OdooError("werkzeug.exceptions.Unauthorized", "Invalid apikey", status=401)
            db = request.headers.get("x-odoo-database")
            if db is not None and db != self.database:
                raise OdooError("werkzeug.exceptions.NotFound", f"database {db!r} not found", status=404)
            try:
                body = request.json() or {}
            except ValueError:
                raise OdooError("werkzeug.exceptions.BadRequest", "Invalid JSON data", status=400) from None
            if not isinstance(body, dict):
                raise OdooError("werkzeug.exceptions.BadRequest", "expected a JSON object", status=400)
            model, method = request.params["model"], request.params["method"]
            if method in ("create", "load") and "ids" in body:  # @api.model methods take no records
                raise OdooError("werkzeug.exceptions.UnprocessableEntity", f"cannot call {model}.{method} with ids",
                                status=422)
            result = self.execute(model, method, [], body, json2=True)
            await self._maybe_lose(method)
            return Response(200, orjson.dumps(result), [("content-type", "application/json; charset=utf-8")])
        except OdooError as exc:
            status = exc.status if exc.status != 200 else JSON2_STATUS.get(exc.name, 500)
            return Response.json(exc.data(), status)

    async def _maybe_lose(self, method: str) -> None:
        """The `lose_answers` fault: an ORM write applied (committed) whose answer never leaves."""
        if method in ORM_WRITES and self.lose_answers > 0:
            self.lose_answers -= 1
            await trio.sleep(3600)  # the client's deadline ends it

    def _version_info(self) -> dict[str, Any]:
        return {"server_version": SERVER_VERSION, "server_version_info": [19, 0, 0, "final", 0, ""],
                "server_serie": SERVER_VERSION, "protocol_version": 1}

    async def _webclient_version_info(self, request: Request) -> Response:
        """`/web/webclient/version_info`, a type="json" route: JSON-RPC envelope, common.version()'s answer."""
        try:
            body = request.json()
        except ValueError:
            return self._rpc_error(None, OdooError("werkzeug.exceptions.BadRequest", "Invalid JSON data"))
        return self._rpc_reply(body.get("id") if isinstance(body, dict) else None, self._version_info())

    async def _version(self, request: Request) -> Response:
        return Response.json({"version": SERVER_VERSION, "version_info": [19, 0, 0, "final", 0, ""]})

    def new_api_key(self) -> str:
        """Rotate the key (tests of rejected credentials)."""
        self.api_key = secrets.token_hex(20)
        return self.api_key
