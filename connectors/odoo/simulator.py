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

import secrets
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime, timedelta
from typing import Any

import orjson
import trio

from freshd.connectors.odoo.domain import lower_bound, matches, mentions, parse_domain
from freshd.connectors.odoo.models import (
    AUX_MODELS,
    COUNTRIES,
    COUNTRY_IDS,
    FIELDS,
    MODELS,
    ORDER_STATES,
    UID,
    OdooError,
    _fmt,
)
from freshd.connectors.odoo.orm import OrmWrites
from freshd.connectors.simcollection import Collection
from freshd.connectors.simulator import FakeData, Request, Response, SimulatorApp

__all__ = ["COUNTRY_IDS", "UID", "OdooError", "OdooSimulator", "error_body"]  # tests import these here

ORM_WRITES = ("create", "write", "unlink", "load")
SERVER_VERSION = "19.0"
USER_CONTEXT = {"lang": "en_US", "tz": "Europe/Brussels", "uid": UID}  # res.users.context_get()
# the ORM methods served: their positional parameters, and the keywords they take beyond those and `context`
SIGNATURES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "search_read": (("domain", "fields", "offset", "limit", "order"), ("load",)),
    "search": (("domain", "offset", "limit", "order"), ()), "search_count": (("domain",), ("limit",)),
    "read": (("ids", "fields", "load"), ()), "fields_get": (("allfields", "attributes"), ()),
    "create": (("vals_list",), ()), "write": (("ids", "vals"), ()), "unlink": (("ids",), ()),
    "load": (("fields", "data"), ())}


# JSON-2's status for an exception (B.2: `http_status` of odoo/exceptions.py; ValueError: the simulator's
# choice, UNCONFIRMED); anything else is 500
JSON2_STATUS = {"odoo.exceptions.AccessError": 403, "odoo.exceptions.AccessDenied": 403,
                "odoo.exceptions.UserError": 422, "odoo.exceptions.ValidationError": 422,
                "odoo.exceptions.MissingError": 404, "odoo.exceptions.LockError": 409, "builtins.ValueError": 422}


def error_body(status: int, code: str, message: str) -> Response:
    """Errors outside the RPC layer (faults, unknown routes): werkzeug-style JSON."""
    name = {404: "werkzeug.exceptions.NotFound", 429: "werkzeug.exceptions.TooManyRequests"}.get(
        status, "werkzeug.exceptions.InternalServerError" if status >= 500 else "werkzeug.exceptions.BadRequest")
    return Response.json({"name": name, "message": message, "arguments": [message], "context": {},
                          "debug": ""}, status)


class OdooSimulator(OrmWrites):
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
        super().__init__(seed, clock)
        self.collections = {m: Collection(m, "write_date") for m in (*MODELS, *AUX_MODELS)}
        self.docs = {m: c.docs for m, c in self.collections.items()}  # a test drops a model from here
        self.ids = {m: c.ids for m, c in self.collections.items()}
        rng, self.entities = self.fake.rng, {}
        changes: dict[str, Callable[[int], dict[str, Any]]] = {  # random_changes' update, per model
            "res.partner": lambda _: {"active": rng.random() > 0.1},
            "sale.order": lambda _: {"state": rng.choice(ORDER_STATES)},
            "product.product": lambda _: {"qty_available": rng.randint(0, 500)}}
        for name, model, touch in (("partners", "res.partner", "phone"), ("products", "product.product",
                                   "description_sale"), ("sale_orders", "sale.order", "client_order_ref")):
            self.entities[name] = self.entities[model] = self.entity(model, touch=touch, corrupt="name",
                                                                     change=changes[model])
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
        now = self._now()
        self._seed({"res.partner": records, "sale.order": records, "product.product": max(records // 10, 1)}, now,
                   history=timedelta(days=365), span=timedelta(days=360), drift=timedelta(days=20),
                   latest=now - timedelta(minutes=1))
        self.app = SimulatorApp(error_body)
        self.app.route("POST", "/jsonrpc", self._jsonrpc)
        self.app.route("POST", "/web/webclient/version_info", self._webclient_version_info)
        self.app.route("POST", "/json/2/{model}/{method}", self._json2)
        self.app.route("GET", "/web/version", self._version)

    # --- data ------------------------------------------------------------------------------------

    churned = MODELS
    write = OrmWrites.update  # Odoo's name for it

    def _touched(self, name: str, moment: datetime) -> dict[str, Any]:
        return {"write_date": _fmt(moment)}

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
            pid = rng.randint(1, max(1, self.collections["res.partner"].next_id - 1))
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

    # --- the ORM ------------------------------------------------------------------------------------

    def _scan(self, model: str, tree: Any, order: str) -> Iterator[dict[str, Any]]:
        """Records in `order`, starting at the domain's lower bound when the index allows."""
        docs = self.docs[model]
        keys = [part.strip().split() for part in order.split(",") if part.strip()] or [["id"]]
        spec = [(k[0], (k[1].lower() if len(k) > 1 else "asc")) for k in keys]
        if spec == [("write_date", "asc"), ("id", "asc")]:
            return (docs[rid] for rid in self.collections[model].modified_from(lower_bound(tree, "write_date")))
        if spec == [("id", "asc")]:
            return (docs[rid] for rid in self.collections[model].ids_from(lower_bound(tree, "id")))
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

    def execute(self, model: str, method: str, args: list[Any], kwargs: dict[str, Any], *,
                json2: bool = False) -> Any:
        context = kwargs.get("context") or {}
        if model == "res.users" and method == "context_get":  # the one res.users method served
            return dict(USER_CONTEXT)
        if method not in SIGNATURES:
            raise OdooError("builtins.AttributeError",
                            f"The method '{method}' does not exist on the model '{model}'")
        names, keywords = SIGNATURES[method]
        unknown = set(kwargs) - {*names, *keywords, "context"}
        if unknown:
            raise OdooError("builtins.TypeError", f"{method}() got an unexpected keyword argument "
                            f"'{sorted(unknown)[0]}'", status=422)
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
            body = request.json(OdooError("werkzeug.exceptions.BadRequest", "Invalid JSON data", status=400)) or {}
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
