"""Odoo external API: partners, sale orders, products, over JSON-RPC or the JSON-2 API.

Sections, in the order every provider module keeps them: auth, error
classification, streams, sync.

* **Transport** (option ``api``): ``jsonrpc`` (default; every version):
  ``POST /jsonrpc`` ``common.authenticate(db, login, key, {})`` once for the uid,
  then stateless ``object.execute_kw(db, uid, key, model, method, args,
  kwargs)``.  ``json2`` (Odoo 19+): ``POST /json/2/<model>/<method>`` with
  ``Authorization: bearer <API key>``, ``X-Odoo-Database``, named parameters.
  Options ``database`` and ``username`` (the login; JSON-RPC only), credential
  ``api_key`` (or ``password``).
* **Errors**: JSON-RPC answers HTTP 200 with an ``error`` envelope; JSON-2
  answers 4xx/5xx with ``{name, message}``.  Both go through one `classify` on
  the exception ``name``: AccessDenied / 401 -> ReauthRequired, AccessError,
  ValidationError, UserError, MissingError, 422 -> PermanentError, session
  expiry, serialization failures, 502/503/504 -> TransientError, 429 ->
  RateLimited.  An unknown exception name is PermanentError (Odoo raised it on
  purpose); an envelope that is neither result nor error is TransientError.
  Answering a write (create, write, unlink, load: read from the request), the
  refusals are item errors: a unique-key ValidationError -> DuplicateKey, other
  ValidationError/UserError/AccessError/ValueError -> Rejected, MissingError ->
  ItemError.
* **Writes**: `OdooWrites` (connectors/odoo/writes.py), the Writer protocol.
* **Streams**: ``partners`` (res.partner), ``sale_orders`` (sale.order),
  ``products`` (product.product), each with a default field list (option
  ``fields = {partners = [...]}`` overrides; ``search_read`` without fields
  would send every computed and binary field).  Many2one values are stored as
  Odoo sends them, ``[id, "name"]``.
* **Paging and cursor** (freshd.connectors.listing): keyset on ``(write_date, id)``,
  ``order='write_date asc, id asc'``, ``limit`` = ``page_size`` (default 500), the
  domain ``write_date > w OR (write_date = w AND id > i)`` (`_search_read`).  Plain
  ``offset`` paging over a live table skips a record each time an earlier one
  is modified mid-listing (it moves to the end and everything shifts left);
  the keyset cannot.  The checkpoint after each page holds the last (w, i), so a
  job resumes exactly after the committed page.  An incremental sync starts
  ``lookback`` (default 60 s) before the newest ``write_date`` read: it is the writing
  transaction's start time, so a long transaction can commit a record dated
  before one we already read.
* **Archived and deleted records**: archived records (``active = False``) are
  synced with ``context.active_test = False`` and kept with ``active: false``.
  Hard deletes leave no trace in Odoo: a full sync (complete keyset listing)
  marks unseen records deleted, and an incremental sync does an id-only
  reconciliation (``search`` for ids, 5,000 a call) at most every
  ``reconcile_interval`` (default 6 h).  A partial listing never deletes.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson

from freshd.connectors.base import ConnectionSettings, Connector, Page, Problems, SyncContext, SyncMode
from freshd.connectors.cursors import due, format_cursor
from freshd.connectors.errors import Answer, ErrorTable, classify_with, decide, describe
from freshd.connectors.listing import SCHEMA, Fetched, fingerprint, run_listing, since_checkpoint, tune
from freshd.connectors.odoo.writes import UNIQUE, OdooWrites
from freshd.connectors.pagination import LoopGuard
from freshd.connectors.paginators import Ask, KeysetPaging
from freshd.connectors.schema import rules
from freshd.connectors.streams import Incremental, Listing, StreamSpec, columns
from freshd.errors import (
    ConfigError,
    ProviderError,
    ReauthRequired,
    TransientError,
)
from freshd.policies.gate import ConnectionPolicies

PAGE_SIZE = 500
ID_CHUNK = 5000
LOOKBACK = 60.0
RECONCILE_INTERVAL = 6 * 3600.0
APIS = ("jsonrpc", "json2")
ODOO_TIME = "%Y-%m-%d %H:%M:%S"  # how Odoo writes datetimes (UTC)


@dataclass(frozen=True, slots=True)
class OdooOptions:
    """A connection's options (seconds for durations).  The database and login may sit with the
    credentials instead (older configurations): `_credentials` checks that one of them gives each."""

    api: str = "jsonrpc"  # JSON-RPC (every version), or JSON-2 (Odoo 19+)
    database: str = ""
    username: str = ""  # the login the API key belongs to (JSON-RPC only)
    page_size: int = PAGE_SIZE  # records per search_read (and per read of `freshctl retry`)
    lookback: float = LOOKBACK  # read before the newest write_date (a long transaction commits late)
    reconcile_interval: float = RECONCILE_INTERVAL  # between id reconciliations of incremental syncs
    # stream -> the fields search_read asks for (a stream not named, or an empty list: DEFAULT_FIELDS)
    fields: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = [name for name in self.fields if name not in DEFAULT_FIELDS]
        rules(("api", self.api in APIS, f"unknown api {self.api!r}; valid: {', '.join(APIS)}"),
              *((key, getattr(self, key) > 0, f"expected a number above zero, got {getattr(self, key)!r}")
                for key in ("page_size", "lookback", "reconcile_interval")),
              ("fields", not unknown, f"unknown stream {', '.join(map(repr, unknown))}: expected a table of "
                                      f"stream = [field, ...] for {', '.join(DEFAULT_FIELDS)}"))


# --- auth --------------------------------------------------------------------------------------------


def _credentials(settings: ConnectionSettings, options: OdooOptions | None) -> tuple[str, str, str]:
    """(database, login, key).  The database and login are identifiers, not secrets: options
    (so logs keep them readable), or credentials for configurations that keep them there.
    `options` None: they were refused (and reported); the identifiers they give still count."""
    creds = settings.credentials

    def given(key: str) -> Any:
        return settings.options.get(key) if options is None else getattr(options, key)

    database = str(given("database") or creds.get("database") or "")
    login = str(given("username") or creds.get("username") or "")
    key = creds.get("api_key") or creds.get("password") or ""
    needed = {"database": database, "api_key (or password)": key}
    if (given("api") or "jsonrpc") == "jsonrpc":
        needed["username"] = login
    missing = [k for k, v in needed.items() if not v]
    if missing:
        raise ConfigError(f"missing {', '.join(missing)} (options: database, username; credential: api_key)",
                          where=f"connection {settings.name}")
    return database, login, key


# --- error classification --------------------------------------------------------------------------

# ORM writes: a refusal there is about the records sent (an item error), not the stream
WRITE_METHODS = frozenset({"create", "write", "unlink", "load"})


def _odoo(response: httpx.Response, answer: Answer) -> ProviderError | Answer | None:
    """Odoo's own reading: the JSON-RPC envelope inside an HTTP 200, and the ORM method called (a
    write's refusals are about its records)."""
    if answer.status is not None and answer.status >= 400:
        if answer.code is None:
            return answer  # no exception name (a 429, a proxy): by status
        return _named(replace(answer, write=_called_method(response) in WRITE_METHODS))
    head = response.content[:120]
    if b'"result"' in head or not head.lstrip().startswith(b'{"jsonrpc"'):
        return None  # a result (or a JSON-2 body, which has no envelope)
    try:
        body = orjson.loads(response.content)
    except ValueError:
        return None  # the client's JSON decoding reports it (retried)
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        data = error.get("data") or {}
        return _named(Answer(answer.status, code=str(data.get("name") or "odoo.exceptions.UserError"),
                             message=str(data.get("message") or error.get("message") or ""),
                             write=_called_method(response) in WRITE_METHODS), rpc_code=error.get("code"))
    if isinstance(body, dict) and "result" in body:
        return None
    return TransientError("Odoo: a JSON-RPC answer with neither result nor error", status=answer.status)


def _named(answer: Answer, rpc_code: Any = None) -> ProviderError | Answer:
    """Two rules a name alone does not say: a wrong database name is a setting to fix, and
    JSON-RPC's code 100 is an expired session."""
    if answer.code == "psycopg2.OperationalError" and "does not exist" in answer.message \
            and (answer.status or 0) < 500:
        return ReauthRequired(describe(ERRORS, answer), status=answer.status, code=answer.code)
    if rpc_code == 100:
        return TransientError(describe(ERRORS, answer), status=answer.status, code=answer.code)
    return answer


# JSON-2's 4xx/5xx `{name, message}` and JSON-RPC's envelope: Odoo's exception name is the code
ERRORS = ErrorTable(
    "Odoo", code=("name",), message=("message", ""), hook=_odoo,
    transient=frozenset({"odoo.http.SessionExpiredException", "psycopg2.errors.SerializationFailure",
                         "psycopg2.extensions.TransactionRollbackError", "psycopg2.OperationalError",
                         "odoo.exceptions.ConcurrencyError", "werkzeug.exceptions.ServiceUnavailable"}),
    transient_messages=("Session Expired",),
    reauth=frozenset({"odoo.exceptions.AccessDenied", "werkzeug.exceptions.Unauthorized"}),
    reauth_statuses=frozenset({401}), expired_statuses=frozenset(),
    # answering a write; unique constraints: a registered SQL one (OCA default_code_uniq,
    # partner_ref_unique), the barcode check, PostgreSQL's own text (B.3, B.4)
    rejected=frozenset({"odoo.exceptions.ValidationError", "odoo.exceptions.UserError",
                        "odoo.exceptions.AccessError", "builtins.ValueError"}),
    duplicate_messages=UNIQUE, missing=frozenset({"odoo.exceptions.MissingError"}),
)
classify = classify_with(ERRORS)


def classify_error(name: str, message: str, *, status: int | None, code: Any = None,
                   method: str | None = None) -> ProviderError:
    """One Odoo exception (by its module.Class name) -> freshd's taxonomy; `method` is the ORM method
    called, when known (a write's ValidationError is about its record, a listing's about the stream)."""
    answer = _named(Answer(status, code=name, message=message, write=method in WRITE_METHODS), rpc_code=code)
    return answer if isinstance(answer, ProviderError) else decide(ERRORS, answer)


def _called_method(response: httpx.Response) -> str | None:
    """The ORM method the request called: JSON-2's path, or execute_kw's fifth argument."""
    try:
        request = response.request
    except RuntimeError:  # a response built without its request
        return None
    path = request.url.path
    if "/json/2/" in path:
        return path.rstrip("/").rsplit("/", 1)[-1]
    try:
        args = orjson.loads(request.content)["params"]["args"]
    except (ValueError, KeyError, TypeError, httpx.RequestNotRead):
        return None
    return str(args[4]) if isinstance(args, list) and len(args) > 4 else None


# --- streams ------------------------------------------------------------------------------------------

# by (write_date, id), the newest write_date as the cursor: `_search_read` makes each ask a search_read
LISTING = Listing(KeysetPaging(("write_date", "id"), size=PAGE_SIZE, total_path="total"),
                  incremental=Incremental("write_date", "write_date", ODOO_TIME, LOOKBACK))

# many2one fields are [id, name]: `partner_id.0` is the id.  Odoo writes false for an empty field:
# read as NULL by every type but text and boolean, so text columns here are ones Odoo always fills
_DATES = ("created_at=create_date:timestamptz", "updated_at=write_date:timestamptz")
PARTNERS = StreamSpec("partners", "res.partner", cursor_field="write_date", cursor_param="write_date",
                      listing=LISTING, columns=columns(
    "id:integer", "name", "is_company:boolean", "active:boolean", "email", "phone", "city", "zip",
    "country_id=country_id.0:integer", "country=country_id.1", "parent_id=parent_id.0:integer", "ref",
    "customer_rank:integer", *_DATES))
SALE_ORDERS = StreamSpec("sale_orders", "sale.order", cursor_field="write_date", cursor_param="write_date",
                         listing=LISTING, columns=columns(
    "id:integer", "name", "state", "partner_id=partner_id.0:integer", "date_order:timestamptz",
    "amount_untaxed:numeric", "amount_tax:numeric", "amount_total:numeric", "currency=currency_id.1",
    "invoice_status", *_DATES))
PRODUCTS = StreamSpec("products", "product.product", cursor_field="write_date", cursor_param="write_date",
                      listing=LISTING, columns=columns(
    "id:integer", "name", "default_code", "barcode", "list_price:numeric", "standard_price:numeric",
    "active:boolean", "type", "qty_available:numeric", "product_tmpl_id=product_tmpl_id.0:integer", *_DATES))

DEFAULT_FIELDS: Mapping[str, tuple[str, ...]] = {
    "partners": ("name", "display_name", "email", "phone", "is_company", "parent_id", "street", "city", "zip",
                 "country_id", "vat", "ref", "lang", "active", "customer_rank", "supplier_rank", "comment",
                 "create_date", "write_date"),
    "sale_orders": ("name", "partner_id", "date_order", "state", "amount_untaxed", "amount_tax", "amount_total",
                    "currency_id", "user_id", "client_order_ref", "origin", "invoice_status", "note", "create_date",
                    "write_date"),
    "products": ("name", "display_name", "default_code", "barcode", "list_price", "standard_price",
                 "product_tmpl_id", "categ_id", "uom_id", "type", "active", "qty_available", "description_sale",
                 "create_date", "write_date"),
}


# JSON-2 names every parameter: the leading ones of each method `call` is given positionally
_PARAMETERS: Mapping[str, tuple[str, ...]] = {
    "read": ("ids",), "create": ("vals_list",), "write": ("ids", "vals"), "unlink": ("ids",),
    "load": ("fields", "data"), "fields_get": ("allfields", "attributes"),
}


# --- sync -----------------------------------------------------------------------------------------------


class OdooConnector(OdooWrites, Connector):
    provider = "odoo"
    options_type = OdooOptions
    options: OdooOptions
    # the database and login may be options (readable in logs) or credentials: _credentials checks them
    required_credentials = ("api_key|password",)
    streams = (PARTNERS, SALE_ORDERS, PRODUCTS)
    since_streams = frozenset(spec.name for spec in streams)  # every one filters by write_date

    def since_state(self, stream: StreamSpec, state: dict[str, Any] | None, since: datetime) -> dict[str, Any]:
        """A listing from write_date >= `since`, keeping the stored cursor as its floor."""
        listed = self.listed[stream.name]
        return since_checkpoint(listed, upgrade_checkpoint(listed, state), since)

    def __init__(self, settings: ConnectionSettings, *, policies: ConnectionPolicies | None = None) -> None:
        self.validate_settings(settings)
        super().__init__(settings, policies=policies)
        options = self.options
        self.database, self.login, self._key = _credentials(settings, options)
        self.listed = {spec.name: tune(spec, page_size=options.page_size, lookback=options.lookback)
                       for spec in self.streams}
        self.fields = {name: list(options.fields.get(name) or DEFAULT_FIELDS[name]) for name in DEFAULT_FIELDS}
        headers = {"Authorization": f"bearer {self._key}", "X-Odoo-Database": self.database} \
            if options.api == "json2" else None
        self.client = self.http_client(settings.base_url.rstrip("/") + "/", classify=classify, headers=headers,
                                       max_connections=2)
        self._uid: int | None = None
        self._ids = itertools.count(1)

    @classmethod
    def validate_settings(cls, settings: ConnectionSettings) -> None:
        problems = Problems()
        options: OdooOptions | None = None
        with problems.collect():
            options = cls.read_options(settings)
        with problems.collect():
            _credentials(settings, options)
        problems.check()

    # -- calls ----------------------------------------------------------------------------------------

    async def _rpc(self, service: str, method: str, args: list[Any], *,
                   replay_safe: bool = True) -> tuple[Any, httpx.Response]:
        body, response = await self.client.request_json(
            "POST", "jsonrpc", json={"jsonrpc": "2.0", "method": "call",
                                     "params": {"service": service, "method": method, "args": args},
                                     "id": next(self._ids)}, replay_safe=replay_safe)
        return body["result"], response

    async def _uid_for_calls(self) -> int:
        if self._uid is None:
            uid, _ = await self._rpc("common", "authenticate", [self.database, self.login, self._key, {}])
            if not isinstance(uid, int) or isinstance(uid, bool):
                raise ReauthRequired(f"Odoo refused the login {self.login!r} on database {self.database!r} "
                                     "(authenticate returned false): check the username and API key")
            self._uid = uid
        return self._uid

    async def call(self, model: str, method: str, *args: Any, replay_safe: bool = True, **kwargs: Any) -> Any:
        """One ORM method: `args` are its leading parameters (the domain of search*, the ids of
        read/write/unlink, vals_list of create, fields and rows of load).

        JSON-RPC passes them positionally, as every Odoo version's signature takes them (the
        domain parameter was `args` before 17.0, `domain` since); JSON-2 names them.
        `replay_safe=False` (creates): a lost answer is Ambiguous, never resent.
        """
        return (await self._call(model, method, *args, replay_safe=replay_safe, **kwargs))[0]

    async def _call(self, model: str, method: str, *args: Any, replay_safe: bool = True,
                    **kwargs: Any) -> tuple[Any, httpx.Response]:
        """`call`, with the response it came in."""
        if self.options.api == "json2":
            named = {**dict(zip(_PARAMETERS.get(method, ("domain",)), args, strict=False)), **kwargs}
            return await self.client.request_json("POST", f"json/2/{model}/{method}", json=named,
                                                  replay_safe=replay_safe)
        uid = await self._uid_for_calls()
        return await self._rpc("object", "execute_kw",
                               [self.database, uid, self._key, model, method, list(args), kwargs],
                               replay_safe=replay_safe)

    async def probe(self) -> None:
        await self.call("res.partner", "search", [], limit=1)

    async def reference_table(self, name: str) -> dict[str, str]:
        """"countries": res.country id -> ISO code (two-way mappings write country_id from a code)."""
        if name != "countries":
            return await super().reference_table(name)
        rows = await self.call("res.country", "search_read", [], fields=["code"])
        return {str(row["id"]): str(row["code"]).upper() for row in rows if row.get("code")}

    # -- listing ----------------------------------------------------------------------------------------

    async def sync_entity(
        self, stream: StreamSpec, state: dict[str, Any] | None, mode: SyncMode, ctx: SyncContext
    ) -> None:
        listed = self.listed[stream.name]
        state = upgrade_checkpoint(listed, state)
        # the id reconciliation: not while a listing is under way, nor in a `sync --since` one (floor)
        if mode is SyncMode.INCREMENTAL and not state.keys() & {"listing", "floor"} \
                and due(state.get("reconciled_at"), self.options.reconcile_interval):
            await self._reconcile_ids(stream, state, ctx)
            state = {**state, "reconciled_at": datetime.now(UTC).strftime(ODOO_TIME)}
        await run_listing(listed, state, mode, ctx, self.client, fetch=functools.partial(self._search_read, listed))

    async def _search_read(self, stream: StreamSpec, ask: Ask, params: dict[str, str]) -> Fetched:
        """One keyset page: the rows after the ask's key (w, i), else from the cursor (write_date >= it)."""
        context, since = {"active_test": False}, params.get("write_date")
        w, i = ask.key or (since, 0)
        body: dict[str, Any] = {}
        if ask.key is None:  # a listing's first page: its size first (progress, the deletion check)
            base = [] if since is None else [["write_date", ">=", since]]
            body["total"] = int(await self.call(stream.path, "search_count", base, context=context))
        domain = [] if w is None else ["|", ["write_date", ">", w], "&", ["write_date", "=", w], ["id", ">", i]]
        rows, response = await self._call(stream.path, "search_read", domain, fields=self.fields[stream.name],
                                          limit=int(ask.params["limit"]), order="write_date asc, id asc",
                                          context=context)
        if not isinstance(rows, list):
            raise TransientError(f"Odoo {stream.path}: expected a list of records, got {type(rows).__name__}")
        return Fetched(body, response, rows)

    async def _reconcile_ids(self, stream: StreamSpec, state: dict[str, Any], ctx: SyncContext) -> None:
        """Every id Odoo still has (archived included); stored ids it no longer has are deleted."""
        seen: set[str] = set()
        after = 0
        guard = LoopGuard(f"Odoo {stream.path} ids")
        # counted first: a record deleted while the ids are listed makes the listing fall short of
        # the count, and the engine then infers no deletion from it
        total = await self.call(stream.path, "search_count", [], context={"active_test": False})
        while True:
            ids = await self.call(stream.path, "search", [["id", ">", after]], limit=ID_CHUNK,
                                  order="id asc", context={"active_test": False})
            if not isinstance(ids, list):
                raise TransientError(f"Odoo {stream.path}: expected a list of ids")
            guard.page(ids)
            seen.update(str(i) for i in ids)
            if len(ids) < ID_CHUNK:
                break
            after = int(ids[-1])
        known = await ctx.known_versions(stream.name, "write_date")
        gone = sorted(set(known) - seen)
        if gone:
            await ctx.emit(Page(stream.name, [], None, inferred_deleted=gone, listing_seen=len(seen),
                                listing_total=int(total) if isinstance(total, int) else None))

    async def fetch_items(self, stream: StreamSpec, ids: Sequence[str], ctx: SyncContext) -> None:
        """`freshctl retry`: read by id; ids Odoo no longer has become tombstones."""
        wanted = [int(i) for i in ids if str(i).isdigit()]
        for start in range(0, len(wanted), self.options.page_size):
            chunk = wanted[start:start + self.options.page_size]
            found = await self._read(stream.name, chunk)  # the stream's fields, archived included
            await ctx.emit(Page(stream.name, list(found.values()), None,
                                deleted=[str(i) for i in chunk if i not in found]))


def upgrade_checkpoint(stream: StreamSpec, state: Mapping[str, Any] | None) -> dict[str, Any]:
    """A checkpoint written before the listing engine, as the engine's schema (`stream`: as listed).

    ``{"phase": "done", "since", "reconciled_at"?}``: `since` is the cursor.  A listing under way
    (``{"phase": "listing", "mode", "position_date", "position_id", "since", "listing_started"}``,
    `since` the newest write_date it had read) resumes right after its last key when the next job
    has its mode: the filter saved with it is the one the engine derives from that cursor.
    """
    if not state or "phase" not in state:
        return dict(state or {})
    cursor, listing, position = state.get("since"), stream.listing, state.get("position_date")
    upgraded = {k: v for k, v in state.items() if k == "reconciled_at"} | ({"cursor": cursor} if cursor else {})
    if state["phase"] != "listing" or not isinstance(position, str) or listing is None or listing.incremental is None:
        return upgraded  # done, or a position unreadable: the next listing starts from the cursor
    full = state.get("mode") == SyncMode.FULL.value or not cursor
    since = None if full else format_cursor(cursor, listing.incremental.format, listing.incremental.lookback)
    return {**upgraded, "listing": {  # started: at its next response
        "v": SCHEMA, "since": since, "fingerprint": fingerprint(stream, listing), "max": cursor, "total": None,
        "pager": {"key": [position, int(state.get("position_id") or 0)]}, "full": full, "shifted": False}}
