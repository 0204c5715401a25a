"""Amazon Selling Partner API (SP-API): FBA inventory, financial events, reimbursements.

Sections, in the order every provider module keeps them: auth, error
classification, streams, sync.

* **Auth**: Login with Amazon.  ``POST {token_url}`` (default
  ``https://api.amazon.com/auth/o2/token``), form-encoded
  ``grant_type=refresh_token``; the 1-hour access token goes in
  ``x-amz-access-token``.  LWA ``invalid_grant``/``invalid_client``/
  ``unauthorized_client``/``access_denied`` are ReauthRequired (sticky, no loop).
  An expired or rejected access token is a 403 ``Unauthorized`` whose details
  name the access token: AuthExpired, so the framework refreshes once.
* **Usage plans**: every request names its operation (``limit="getInventorySummaries"``
  …) and the class's `rate_limits` are the published plans; the gate adopts
  ``x-amzn-RateLimit-Limit`` when the API sends it.  A 429 ``QuotaExceeded``
  carries no Retry-After, so the wait is one refill interval of that
  operation's plan (2 s for listFinancialEvents, 60 s for createReport).
* **inventory_summaries** (``GET /fba/inventory/v1/summaries``, one listing per
  marketplace, ``details=true``): incremental by ``startDateTime`` (5 minutes of
  overlap).  That filter misses inbound-quantity changes and deletions, so at most
  every ``inventory_full_interval`` (default 24 h) an incremental sync lists
  everything instead, and a listing read whole reconciles deletions.  The
  ``nextToken`` dies 30 s after it is issued: a listing that waited too long
  (a slow writer, a long throttle) gets "Next token is invalid or expired" and
  restarts that marketplace from the start; records already emitted in this run
  with the same content are not emitted again.  Records get ``marketplaceId``
  and ``id = "{marketplaceId}:{sellerSku}"`` (the API has no id).
* **financial_events** (``GET /finances/v0/financialEvents``): read in windows of
  at most 180 days (longer ranges come back *empty*), ``PostedBefore`` at least
  3 minutes before now (the 2-minute rule plus a minute for clock skew).  The
  watermark is the last window's end; an incremental sync starts
  ``finances_lookback_hours`` (48) before it, because events can show up to 48 h
  late.  Each event of each ``…EventList`` becomes one record, ``eventType`` +
  ``id = "{eventType}:{blake2b-80 of the event's canonical JSON}"`` (``:{n}`` for the
  n-th identical event of one window): stable across re-reads, so the lookback and
  restarted windows never duplicate.
* **reimbursements**: the union of two sources, each record tagged ``source``
  (option ``reimbursement_sources``): ``"report"`` rows of the
  ``GET_FBA_REIMBURSEMENTS_DATA`` report (create, poll until DONE, get the
  document, download, gunzip, parse the tab-separated text; CANCELLED (no data,
  or asked too soon) leaves the range for the next report, FATAL fails the
  entity; ``id = "report:{reimbursement-id}:{sku}"``),
  requested at most every ``report_interval`` (4 h, the FBA report cadence);
  and ``"financial_events"``: each item of ``AdjustmentEvent``s with
  ``AdjustmentType == "FBAInventoryReimbursement"`` (``id =
  "{financial event id}#{item index}"``), which post within hours.  A cash
  reimbursement is in both; inventory-only reimbursements are in the report only.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import re
import time
import zlib
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urljoin

import httpx
import orjson
import structlog
import trio

from freshd.connectors.base import (
    ConnectionSettings,
    Connector,
    Page,
    StreamSpec,
    SyncContext,
    SyncMode,
    columns,
)
from freshd.connectors.errors import Answer, ErrorTable, classify_with, describe
from freshd.connectors.http import classify_http
from freshd.connectors.pagination import LoopGuard
from freshd.errors import (
    AuthExpired,
    ConfigError,
    PermanentError,
    ProviderError,
    TransientError,
)
from freshd.policies.gate import ConnectionPolicies
from freshd.policies.ratelimit import Rate
from freshd.policies.tokens import Token

log = structlog.get_logger(__name__)

REGIONS = {  # API_FACTS §4.2
    "na": "https://sellingpartnerapi-na.amazon.com",
    "eu": "https://sellingpartnerapi-eu.amazon.com",
    "fe": "https://sellingpartnerapi-fe.amazon.com",
}
LWA_TOKEN_URL = "https://api.amazon.com/auth/o2/token"
INVENTORY_PATH = "/fba/inventory/v1/summaries"
FINANCES_PATH = "/finances/v0/financialEvents"
REPORTS_PATH = "/reports/2021-06-30/reports"
DOCUMENTS_PATH = "/reports/2021-06-30/documents"
REIMBURSEMENT_REPORT = "GET_FBA_REIMBURSEMENTS_DATA"

MAX_WINDOW = timedelta(days=180)  # financial events: a longer PostedAfter..PostedBefore comes back empty
POSTED_BEFORE_SAFETY = timedelta(minutes=3)  # the 2-minute rule, plus a minute of clock skew
INVENTORY_HORIZON = timedelta(days=540)  # startDateTime may not be older than 18 months
INVENTORY_OVERLAP = timedelta(minutes=5)
REPORT_HORIZON = timedelta(days=540)
REPORT_ROWS_PER_PAGE = 1000
MAX_RESTARTS = 3  # a listing whose pagination token keeps expiring gives up after this many restarts
DEFAULTS: dict[str, Any] = {
    "history_days": 730,  # first sync of finances/reimbursements reaches this far back (or start_date)
    "finances_lookback_hours": 48.0,
    "inventory_full_interval": 86400.0,
    "report_interval": 4 * 3600.0,
    "report_poll_interval": 10.0,
    "report_timeout": 3600.0,
}
SOURCES = ("report", "financial_events")

# operation -> usage plan (API_FACTS §4.3, §4.4, §4.6); the gate's buckets start from these
USAGE_PLANS: dict[str, Rate] = {
    "getInventorySummaries": Rate(2.0, 2),
    "listFinancialEvents": Rate(0.5, 30),
    "createReport": Rate(0.0167, 15),
    "getReport": Rate(2.0, 15),
    "getReportDocument": Rate(0.0167, 15),
    "getReports": Rate(0.0222, 10),
}


def _utcnow() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_time(value: str) -> datetime:
    moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).astimezone(UTC)


# --- auth --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Options:
    """A connection's settings, checked once (ConfigError names the bad key)."""

    base_url: str
    token_url: str
    marketplaces: tuple[str, ...]
    start_date: datetime
    finances_lookback: timedelta
    inventory_full_interval: float
    report_interval: float
    report_poll_interval: float
    report_timeout: float
    sources: tuple[str, ...]

    @classmethod
    def parse(cls, settings: ConnectionSettings) -> Options:
        where = f"connection {settings.name}"
        missing = [k for k in ("refresh_token", "client_id", "client_secret") if not settings.credentials.get(k)]
        if missing:
            raise ConfigError(f"missing credential(s): {', '.join(missing)}", where=where)
        opts = settings.options
        region = opts.get("region")
        if region is not None and region not in REGIONS:
            raise ConfigError(f"unknown region {region!r}; valid: {', '.join(REGIONS)}",
                              where=f"{where} options.region")
        base_url = (settings.base_url or (REGIONS[region] if region else "")).rstrip("/")
        if not base_url:
            raise ConfigError("base_url (the SP-API host) or options.region is required", where=where)
        host = re.match(r"https://sellingpartnerapi-(na|eu|fe)\.amazon\.com$", base_url)
        if region and host and host.group(1) != region:
            raise ConfigError(f"base_url {base_url} is not the {region} endpoint", where=f"{where} options.region")
        raw = opts.get("marketplace_ids")
        marketplaces = tuple(m.strip() for m in raw.split(",") if m.strip()) if isinstance(raw, str) else \
            tuple(str(m) for m in raw) if isinstance(raw, list | tuple) else ()
        if not marketplaces:
            raise ConfigError("at least one marketplace id is required, e.g. [\"ATVPDKIKX0DER\"]",
                              where=f"{where} options.marketplace_ids")
        numbers: dict[str, float] = {}
        for key in ("history_days", "finances_lookback_hours", "inventory_full_interval", "report_interval",
                    "report_poll_interval", "report_timeout"):
            value = opts.get(key, DEFAULTS[key])
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ConfigError(f"expected a number >= 0, got {value!r}", where=f"{where} options.{key}")
            numbers[key] = float(value)
        start = _utcnow() - timedelta(days=numbers["history_days"])
        if opts.get("start_date"):
            try:
                start = _parse_time(str(opts["start_date"]))
            except ValueError:
                raise ConfigError(f"expected an ISO 8601 date, got {opts['start_date']!r}",
                                  where=f"{where} options.start_date") from None
        sources = opts.get("reimbursement_sources", list(SOURCES))
        if not isinstance(sources, list | tuple) or not set(sources) <= set(SOURCES):
            raise ConfigError(f"expected a subset of {list(SOURCES)}, got {sources!r}",
                              where=f"{where} options.reimbursement_sources")
        token_url = str(opts.get("token_url") or LWA_TOKEN_URL)
        if not token_url.startswith(("http://", "https://")):
            token_url = urljoin(base_url + "/", token_url)  # a path on the SP-API host (simulators, proxies)
        return cls(base_url, token_url, marketplaces, start.replace(microsecond=0),
                   timedelta(hours=numbers["finances_lookback_hours"]), numbers["inventory_full_interval"],
                   numbers["report_interval"], max(numbers["report_poll_interval"], 0.01),
                   numbers["report_timeout"], tuple(sources))


# Login with Amazon's `{"error", "error_description"}` answers (LWAExceptionErrorCode.java)
LWA_ERRORS = ErrorTable(
    "Login with Amazon", code=("error",), message=("error_description",), transient_statuses=frozenset(),
    transient=frozenset({"server_error", "temporarily_unavailable"}),
    # "these credentials will not work again"
    reauth=frozenset({"invalid_grant", "invalid_client", "unauthorized_client", "access_denied"}),
    reauth_statuses=frozenset({401, 403}),
)
classify_lwa = classify_with(LWA_ERRORS)


def _access_token_header(token: Token) -> dict[str, str]:
    return {"x-amz-access-token": token.access_token}


# --- error classification --------------------------------------------------------------------


class StaleNextToken(PermanentError):
    """A pagination token the API no longer accepts (expired): the listing must start over."""


# (method, path pattern) -> operation, for 429s, which carry no rate header
_OPERATIONS = (
    ("GET", re.compile(r"^/fba/inventory/v1/summaries/?$"), "getInventorySummaries"),
    ("GET", re.compile(r"^/finances/v0/financialEvents/?$", re.IGNORECASE), "listFinancialEvents"),
    ("POST", re.compile(r"^/reports/2021-06-30/reports/?$"), "createReport"),
    ("GET", re.compile(r"^/reports/2021-06-30/reports/?$"), "getReports"),
    ("GET", re.compile(r"^/reports/2021-06-30/reports/[^/]+/?$"), "getReport"),
    ("GET", re.compile(r"^/reports/2021-06-30/documents/[^/]+/?$"), "getReportDocument"),
)
_TOKEN_TROUBLE = re.compile(r"access token|security token|token .*expired|expired token", re.IGNORECASE)
_PAGING_PARAMS = ("nextToken", "NextToken")


def operation_of(method: str, path: str) -> str | None:
    for verb, pattern, op in _OPERATIONS:
        if verb == method.upper() and pattern.search(path):
            return op
    return None


def _sp_api(response: httpx.Response, answer: Answer) -> ProviderError | Answer | None:
    """What SP-API's codes alone do not say: a 429 without Retry-After waits one token of the
    operation's plan; a 403 naming the access token is an expired one ("The access token you provided
    has expired.", "... is revoked, malformed or invalid."), other 403s lack a role; a 400 about the
    token on a paged request is a stale nextToken."""
    if answer.status is None or answer.status < 400:
        return None
    said = f"{answer.message} {answer.detail}"
    request = _request_of(response)
    if answer.retry_after is None and (answer.status == 429 or answer.code == "QuotaExceeded"):
        op = operation_of(request.method, request.url.path) if request is not None else None
        if op in USAGE_PLANS:
            return replace(answer, retry_after=1.0 / USAGE_PLANS[op].per_second)  # one token back in its bucket
    elif answer.status == 403 and _TOKEN_TROUBLE.search(said):
        return AuthExpired(describe(SP_API_ERRORS, answer), status=403, code=answer.code)
    elif answer.status == 400 and "token" in said.lower() and request is not None \
            and any(p in request.url.params for p in _PAGING_PARAMS):
        return StaleNextToken(describe(SP_API_ERRORS, answer), status=400, code=answer.code)
    return answer


def _request_of(response: httpx.Response) -> httpx.Request | None:
    try:
        return response.request
    except RuntimeError:  # a Response built by hand (tests)
        return None


# `{"errors": [{"code", "message", "details"}]}`
SP_API_ERRORS = ErrorTable("SP-API", code=("errors.0.code",), message=("errors.0.message",),
                           detail=("errors.0.details",), rate_limited=frozenset({"QuotaExceeded"}),
                           transient_statuses=frozenset({408}), hook=_sp_api)
classify = classify_with(SP_API_ERRORS)


def _payload(body: Any, what: str) -> dict[str, Any]:
    """`payload` of a 200; the API sometimes answers 200 with only `errors`."""
    if isinstance(body, dict) and isinstance(body.get("payload"), dict):
        return body["payload"]  # type: ignore[no-any-return]
    if isinstance(body, dict) and body.get("errors"):
        first = body["errors"][0] if isinstance(body["errors"], list) and body["errors"] else {}
        raise PermanentError(f"SP-API {what}: {first}", code=str(first.get("code")) if isinstance(first, dict)
                             else None)
    raise TransientError(f"SP-API {what}: no payload in the response")


# --- streams -----------------------------------------------------------------------------------

INVENTORY = StreamSpec("inventory_summaries", INVENTORY_PATH, cursor_field="lastUpdatedTime",
                       cursor_param="startDateTime", columns=columns(
    "marketplace_id=marketplaceId", "seller_sku=sellerSku", "asin", "fn_sku=fnSku", "product_name=productName",
    "condition", "total_quantity=totalQuantity:integer",
    "fulfillable_quantity=inventoryDetails.fulfillableQuantity:integer",
    "last_updated=lastUpdatedTime:timestamptz"))
FINANCIAL_EVENTS = StreamSpec("financial_events", FINANCES_PATH, cursor_field="PostedDate",
                              cursor_param="PostedAfter", columns=columns(
    "event_type=eventType", "posted_at=PostedDate:timestamptz", "amazon_order_id=AmazonOrderId",
    "marketplace_name=MarketplaceName", "adjustment_type=AdjustmentType"))
REIMBURSEMENTS = StreamSpec("reimbursements", REPORTS_PATH, cursor_field="approval-date",
                            columns=columns(
    "approved_at=approval-date:timestamptz", "reimbursement_id=reimbursement-id", "case_id=case-id",
    "amazon_order_id=amazon-order-id", "reason", "sku", "asin", "currency=currency-unit",
    "amount_total=amount-total:numeric", "quantity_total=quantity-reimbursed-total:integer", "source"))


def inventory_id(marketplace: str, sku: str) -> str:
    return f"{marketplace}:{sku}"


def _digest(data: Any, size: int = 10) -> str:
    return hashlib.blake2b(orjson.dumps(data, option=orjson.OPT_SORT_KEYS), digest_size=size).hexdigest()


@dataclass(frozen=True, slots=True)
class FinancialEvent:
    id: str
    event_type: str  # "ShipmentEvent", "AdjustmentEvent", ...
    digest: str
    body: dict[str, Any]


def flatten_events(events: Mapping[str, Any], occurrences: Counter[str]) -> Iterator[FinancialEvent]:
    """Every event of every `…EventList`, with its synthetic id (see the module docstring)."""
    for list_name, items in events.items():
        if not list_name.endswith("EventList") or not isinstance(items, list):
            continue
        event_type = list_name.removesuffix("List")
        for item in items:
            if not isinstance(item, dict):
                continue
            digest = _digest(item)
            key = f"{event_type}:{digest}"
            occurrences[key] += 1
            n = occurrences[key]
            yield FinancialEvent(key if n == 1 else f"{key}:{n}", event_type, digest, item)


def event_record(event: FinancialEvent) -> dict[str, Any]:
    posted = event.body.get("PostedDate") or event.body.get("postedDate")  # ServiceFeeEvent has none
    return {**event.body, "eventType": event.event_type, "PostedDate": posted, "id": event.id}


def reimbursement_event_records(event: FinancialEvent) -> list[dict[str, Any]]:
    """The items of an FBAInventoryReimbursement adjustment, one record each."""
    body = event.body
    if event.event_type != "AdjustmentEvent" or body.get("AdjustmentType") != "FBAInventoryReimbursement":
        return []
    items = [i for i in body.get("AdjustmentItemList") or [] if isinstance(i, dict)] or [{}]
    head = {k: body.get(k) for k in ("AdjustmentType", "PostedDate", "StoreName", "AdjustmentAmount")}
    return [{**head, **item, "source": "financial_events", "financialEventId": event.id,
             "id": f"{event.id}#{index}"} for index, item in enumerate(items)]


def parse_report(text: str) -> tuple[list[dict[str, str]], list[str]]:
    """A tab-separated flat file (header line first) -> rows, and reasons for lines that did not fit."""
    reader = csv.reader(text.splitlines(), delimiter="\t", quoting=csv.QUOTE_NONE)
    header = next(reader, None)
    if not header:
        return [], []
    header = [h.strip() for h in header]
    rows, bad = [], []
    for number, line in enumerate(reader, start=2):
        if not line or line == [""]:
            continue
        if len(line) != len(header):
            bad.append(f"report line {number}: {len(line)} fields, the header has {len(header)}")
            continue
        rows.append(dict(zip(header, line, strict=True)))
    return rows, bad


def decode_report(data: bytes, content_type: str | None) -> str:
    """Report documents are UTF-8, or Cp1252 in some marketplaces (UNCONFIRMED: honour a charset when sent)."""
    charset = None
    if content_type and "charset=" in content_type.lower():
        charset = content_type.lower().split("charset=")[1].split(";")[0].strip()
    for encoding in (charset, "utf-8", "cp1252"):
        if encoding:
            try:
                return data.decode(encoding)
            except (LookupError, UnicodeDecodeError):
                continue
    return data.decode("latin-1")


class _Once:
    """What this run already emitted (id -> content digest): a restarted listing re-emits only changes."""

    def __init__(self) -> None:
        self._seen: dict[str, str] = {}

    def fresh(self, records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        out = []
        for record in records:
            key, digest = str(record.get("id")), _digest(record, 12)
            if self._seen.get(key) != digest:
                self._seen[key] = digest
                out.append(record)
        return out


def _windows(start: datetime, end: datetime) -> list[tuple[datetime, datetime]]:
    windows = []
    while start < end:
        stop = min(start + MAX_WINDOW, end)
        windows.append((start, stop))
        start = stop
    return windows


# --- sync --------------------------------------------------------------------------------------

OnPage = Callable[[Any, bool], Awaitable[None]]  # (one page's payload or events, is it the last page)


class AmazonSPConnector(Connector):
    provider = "amazon_sp"
    required_credentials = ("refresh_token", "client_id", "client_secret")  # Login with Amazon
    streams = (INVENTORY, FINANCIAL_EVENTS, REIMBURSEMENTS)

    @classmethod
    def since_problem(cls, stream: StreamSpec) -> str | None:
        return (f"amazon_sp cannot re-read {stream.name} from a date: its windows are kept per marketplace "
                f"and bounded by the API's horizon (a full sync, --full, re-reads what the API still offers)")
    rate_limits = USAGE_PLANS

    def __init__(self, settings: ConnectionSettings, *, policies: ConnectionPolicies | None = None) -> None:
        super().__init__(settings, policies=policies)
        self.options = Options.parse(settings)
        self.concurrency = int(settings.options.get("page_concurrency", 2))
        agent = {"User-Agent": "freshd/0.1 (Language=Python)"}
        self.client = self.http_client(self.options.base_url, classify=classify, headers=agent,
                                       token_header=_access_token_header)
        self.lwa = self.http_client("", classify=classify_lwa, headers=agent)
        # presigned report document URLs: no access token, S3's own errors
        # report documents are files, not pages: allowed 8 times a page's size limit
        self.downloads = self.http_client("", classify=classify_http, headers=agent, timeout=120.0,
                                          max_response_bytes=8 * self.policies.limits.max_response_bytes)

    @classmethod
    def validate_settings(cls, settings: ConnectionSettings) -> None:
        Options.parse(settings)

    async def aclose(self) -> None:
        await self.client.aclose()
        await self.lwa.aclose()
        await self.downloads.aclose()

    async def refresh_token(self, current: Token | None) -> Token:
        creds = self.settings.credentials
        refresh = (current.refresh_token if current is not None else None) or creds["refresh_token"]
        body, _ = await self.lwa.request_json("POST", self.options.token_url, data={
            "grant_type": "refresh_token", "refresh_token": refresh,
            "client_id": creds["client_id"], "client_secret": creds["client_secret"],
        }, limit="token")
        if not isinstance(body, dict) or not isinstance(body.get("access_token"), str):
            raise TransientError("Login with Amazon: no access_token in the token response")
        try:
            expires_in = float(body.get("expires_in", 3600))
        except (TypeError, ValueError):
            expires_in = 3600.0
        return Token(body["access_token"], time.time() + expires_in, body.get("refresh_token") or refresh,
                     {"token_type": body.get("token_type", "bearer")})

    async def probe(self) -> None:
        await self.client.get_json(INVENTORY_PATH, params=self._inventory_params(self.options.marketplaces[0],
                                                                                 details=False),
                                   limit="getInventorySummaries")

    async def sync_entity(
        self, stream: StreamSpec, state: dict[str, Any] | None, mode: SyncMode, ctx: SyncContext
    ) -> None:
        if stream.name == INVENTORY.name:
            await self._sync_inventory(state, mode, ctx)
        elif stream.name == FINANCIAL_EVENTS.name:
            once = _Once()

            async def emit(events: list[FinancialEvent], checkpoint: dict[str, Any] | None) -> None:
                await ctx.emit(Page(FINANCIAL_EVENTS.name, once.fresh([event_record(e) for e in events]),
                                    checkpoint))

            await self._finance_pass(state, mode, emit, lambda sub: sub)
        elif stream.name == REIMBURSEMENTS.name:
            await self._sync_reimbursements(state, mode, ctx)
        else:
            raise PermanentError(f"amazon_sp has no stream {stream.name!r}")

    # --- inventory ---------------------------------------------------------------------------------

    def _inventory_params(self, marketplace: str, *, details: bool = True) -> dict[str, str]:
        return {"granularityType": "Marketplace", "granularityId": marketplace, "marketplaceIds": marketplace,
                "details": "true" if details else "false"}

    @staticmethod
    def _inventory_records(
        marketplace: str, payload: dict[str, Any]
    ) -> tuple[list[dict[str, Any]], list[tuple[str | None, str]]]:
        records: list[dict[str, Any]] = []
        failures: list[tuple[str | None, str]] = []
        for summary in payload.get("inventorySummaries") or []:
            sku = summary.get("sellerSku") if isinstance(summary, dict) else None
            if not isinstance(sku, str) or not sku:
                failures.append((None, f"inventory summary without sellerSku in {marketplace}"))
                continue
            records.append({**summary, "marketplaceId": marketplace, "id": inventory_id(marketplace, sku)})
        return records, failures

    async def _list_inventory(self, marketplace: str, since: str | None, on_page: OnPage) -> None:
        """One marketplace's listing, restarted from the start when its nextToken went stale."""
        params = self._inventory_params(marketplace)
        if since:
            params["startDateTime"] = since
        for attempt in range(MAX_RESTARTS + 1):
            guard = LoopGuard(f"SP-API getInventorySummaries {marketplace}")
            token: str | None = None
            try:
                while True:
                    body, _ = await self.client.get_json(
                        INVENTORY_PATH, params={**params, **({"nextToken": token} if token else {})},
                        limit="getInventorySummaries")
                    payload = _payload(body, "getInventorySummaries")
                    pagination = body.get("pagination") if isinstance(body.get("pagination"), dict) else {}
                    token = pagination.get("nextToken") or None
                    summaries = payload.get("inventorySummaries") or []
                    guard.page([s.get("sellerSku") for s in summaries if isinstance(s, dict)])
                    if token:
                        guard.cursor(token)
                    await on_page(payload, token is None)
                    if token is None:
                        return
            except StaleNextToken as exc:
                log.info("amazon_sp.listing_restarted", what="inventory", marketplace=marketplace,
                         attempt=attempt + 1, error=str(exc))
        raise TransientError(f"SP-API getInventorySummaries {marketplace}: nextToken expired "
                             f"{MAX_RESTARTS + 1} times in a row (the listing is read too slowly)")

    async def _sync_inventory(self, state: dict[str, Any] | None, mode: SyncMode, ctx: SyncContext) -> None:
        state = state or {}
        now = _utcnow()
        full_at = state.get("full_at")
        resume = state if state.get("phase") == "listing" and state.get("mode") == mode.value else None
        if resume:
            full, started, done = bool(resume["full"]), str(resume["started"]), list(resume["done"])
        else:
            full = mode is SyncMode.FULL or not full_at or \
                (now - _parse_time(full_at)).total_seconds() >= self.options.inventory_full_interval
            started, done = _iso(now), []
        since_map: dict[str, str] = dict(state.get("since") or {})
        pending = [m for m in self.options.marketplaces if m not in done]
        complete = full and not resume  # only a listing read whole in this run may reconcile deletions
        next_since = _iso(_parse_time(started) - INVENTORY_OVERLAP)
        once = _Once()
        current = {"marketplace": "", "last_marketplace": False, "whole": False}

        async def on_page(payload: dict[str, Any], last: bool) -> None:
            marketplace = str(current["marketplace"])
            records, failures = self._inventory_records(marketplace, payload)
            if last:
                done.append(marketplace)
                since_map[marketplace] = next_since
            final = last and bool(current["last_marketplace"])
            if final:
                checkpoint = {"phase": "done", "since": dict(since_map), "full_at": started if complete else full_at}
            else:
                checkpoint = {"phase": "listing", "mode": mode.value, "full": full, "started": started,
                              "done": list(done), "since": dict(since_map), "full_at": full_at}
            await ctx.emit(Page(INVENTORY.name, once.fresh(records), checkpoint, failures=failures,
                                full_listing=bool(current["whole"]), listing_complete=complete and final))

        if not pending:
            await ctx.emit(Page(INVENTORY.name, [], {"phase": "done", "since": since_map, "full_at": full_at}))
            return
        for index, marketplace in enumerate(pending):
            since = None if full else since_map.get(marketplace)
            if since and _parse_time(since) < now - INVENTORY_HORIZON:
                since = None  # older than the API accepts: list it whole
            current.update(marketplace=marketplace, last_marketplace=index == len(pending) - 1,
                           whole=since is None)
            await self._list_inventory(marketplace, since, on_page)

    async def fetch_items(self, stream: StreamSpec, ids: Sequence[str], ctx: SyncContext) -> None:
        """Inventory summaries by SKU, 50 at a time (`sellerSkus`); SKUs no longer listed become tombstones."""
        if stream.name != INVENTORY.name:
            raise PermanentError(f"amazon_sp cannot fetch {stream.name} by id (their ids are synthetic)")
        by_marketplace: dict[str, list[str]] = {}
        for external_id in ids:
            marketplace, _, sku = external_id.partition(":")
            by_marketplace.setdefault(marketplace, []).append(sku)
        for marketplace, skus in by_marketplace.items():
            for start in range(0, len(skus), 50):
                chunk = skus[start:start + 50]
                body, _ = await self.client.get_json(
                    INVENTORY_PATH, params={**self._inventory_params(marketplace), "sellerSkus": ",".join(chunk)},
                    limit="getInventorySummaries")
                records, failures = self._inventory_records(marketplace, _payload(body, "getInventorySummaries"))
                found = {r["sellerSku"] for r in records}
                await ctx.emit(Page(INVENTORY.name, records, None, failures=failures,
                                    deleted=[inventory_id(marketplace, s) for s in chunk if s not in found]))

    # --- finances ----------------------------------------------------------------------------------

    async def _finance_window(self, after: datetime, before: datetime, on_page: OnPage) -> None:
        """One PostedAfter..PostedBefore window, all pages; restarted whole if its NextToken went stale."""
        params: dict[str, str | int] = {"PostedAfter": _iso(after), "PostedBefore": _iso(before),
                                        "MaxResultsPerPage": 100}
        for attempt in range(MAX_RESTARTS + 1):
            guard = LoopGuard(f"SP-API listFinancialEvents {_iso(after)}..{_iso(before)}")
            occurrences: Counter[str] = Counter()  # identical events of one window: :2, :3, ...
            token: str | None = None
            try:
                while True:
                    body, _ = await self.client.get_json(
                        FINANCES_PATH, params={**params, **({"NextToken": token} if token else {})},
                        limit="listFinancialEvents")
                    payload = _payload(body, "listFinancialEvents")
                    token = payload.get("NextToken") or None
                    events = list(flatten_events(payload.get("FinancialEvents") or {}, occurrences))
                    guard.page([e.digest for e in events])
                    if token:
                        guard.cursor(token)
                    await on_page(events, token is None)
                    if token is None:
                        return
            except StaleNextToken as exc:
                log.info("amazon_sp.listing_restarted", what="financial events", window=params,
                         attempt=attempt + 1, error=str(exc))
        raise TransientError(f"SP-API listFinancialEvents: NextToken expired {MAX_RESTARTS + 1} times in a row")

    async def _finance_pass(
        self,
        sub: dict[str, Any] | None,
        mode: SyncMode,
        emit: Callable[[list[FinancialEvent], dict[str, Any] | None], Awaitable[None]],
        wrap: Callable[[dict[str, Any]], dict[str, Any]],
    ) -> dict[str, Any]:
        """Financial events from the watermark (minus the lookback) to now - 3 min, in <= 180-day windows.

        `emit(events, checkpoint)` gets each page; `wrap` turns this pass's state into the stream's
        checkpoint.  Returns the pass's final state.
        """
        sub = sub or {}
        end = _utcnow() - POSTED_BEFORE_SAFETY
        watermark = sub.get("posted_after")
        if sub.get("phase") == "windows" and sub.get("mode") == mode.value and watermark:
            start = _parse_time(watermark)  # a resumed job: its windows before this one are stored
        elif mode is SyncMode.FULL or not watermark:
            start = self.options.start_date
        else:
            start = _parse_time(watermark) - self.options.finances_lookback  # late events
        windows = _windows(start, end)
        final = {"phase": "done", "posted_after": _iso(end) if windows else watermark or _iso(end)}
        if not windows:
            await emit([], wrap(final))
            return final
        current = {"index": 0}

        async def on_page(events: list[FinancialEvent], last: bool) -> None:
            index = current["index"]
            checkpoint = None
            if last:
                checkpoint = wrap(final if index == len(windows) - 1 else
                                  {"phase": "windows", "mode": mode.value, "posted_after": _iso(windows[index][1])})
            await emit(events, checkpoint)

        for index, (after, before) in enumerate(windows):
            current["index"] = index
            await self._finance_window(after, before, on_page)
        return final

    # --- reimbursements ------------------------------------------------------------------------------

    async def _sync_reimbursements(self, state: dict[str, Any] | None, mode: SyncMode, ctx: SyncContext) -> None:
        state = state or {}
        status: dict[str, Any] = {"events": state.get("events") or {}, "report": state.get("report") or {}}
        once = _Once()

        def wrap(sub: dict[str, Any]) -> dict[str, Any]:
            status["events"] = sub
            return {"events": sub, "report": status["report"]}

        async def emit(events: list[FinancialEvent], checkpoint: dict[str, Any] | None) -> None:
            records = [r for e in events for r in reimbursement_event_records(e)]
            await ctx.emit(Page(REIMBURSEMENTS.name, once.fresh(records), checkpoint))

        if "financial_events" in self.options.sources:
            await self._finance_pass(status["events"], mode, emit, wrap)
        if "report" in self.options.sources:
            await self._report_pass(status, mode, ctx)

    async def _report_pass(self, status: dict[str, Any], mode: SyncMode, ctx: SyncContext) -> None:
        report: dict[str, Any] = status["report"]
        now = _utcnow()

        def checkpoint(report_state: dict[str, Any]) -> dict[str, Any]:
            status["report"] = report_state
            return {"events": status["events"], "report": report_state}

        pending = report.get("pending")
        if not pending:
            requested = report.get("requested_at")
            if mode is SyncMode.INCREMENTAL and requested and report.get("end") and \
                    (now - _parse_time(requested)).total_seconds() < self.options.report_interval:
                return  # FBA reports are regenerated at most every few hours: not due yet
            if mode is SyncMode.FULL or not report.get("end"):
                start = self.options.start_date
            else:
                start = _parse_time(report["end"]) - self.options.finances_lookback
            start = max(start, now - REPORT_HORIZON)
            report_id = await self._create_report(start, now)
            pending = {"id": report_id, "start": _iso(start), "end": _iso(now), "rows": 0}
            # committed at once: an interrupted job polls this report again instead of creating another
            await ctx.emit(Page(REIMBURSEMENTS.name, [], checkpoint({**report, "pending": pending})))
        try:
            document_id = await self._await_report(str(pending["id"]))
        except PermanentError as exc:
            if exc.status != 404 or not report.get("pending"):
                raise
            # a resumed job's report is gone (reports are kept 90 days at most): ask for a new one
            status["report"] = {k: v for k, v in report.items() if k != "pending"}
            await self._report_pass(status, mode, ctx)
            return
        if document_id is None:
            # CANCELLED: no data, or an FBA report asked for too soon after the last one. The range is
            # not marked read (the next report covers it again); the interval still applies.
            kept = {k: v for k, v in report.items() if k != "pending"}
            await ctx.emit(Page(REIMBURSEMENTS.name, [], checkpoint({**kept, "requested_at": _iso(now)})))
            return
        rows, bad = await self._read_document(document_id)
        records, failures = self._report_records(str(pending["id"]), rows)
        failures += [(None, reason) for reason in bad]
        skip = int(pending.get("rows", 0))
        done = {"end": pending["end"], "requested_at": _iso(now)}
        chunks = range(skip, max(len(records), skip + 1), REPORT_ROWS_PER_PAGE)
        for first in chunks:
            stop = first + REPORT_ROWS_PER_PAGE
            last = stop >= len(records)
            state = done if last else {**report, "pending": {**pending, "rows": stop}}
            await ctx.emit(Page(REIMBURSEMENTS.name, records[first:stop], checkpoint(state),
                                failures=failures if last else ()))

    async def _create_report(self, start: datetime, end: datetime) -> str:
        body, _ = await self.client.request_json("POST", REPORTS_PATH, json={
            "reportType": REIMBURSEMENT_REPORT, "marketplaceIds": list(self.options.marketplaces),
            "dataStartTime": _iso(start), "dataEndTime": _iso(end),
        }, limit="createReport")
        report_id = body.get("reportId") if isinstance(body, dict) else None
        if not report_id:
            raise TransientError("SP-API createReport: no reportId in the response")
        return str(report_id)

    async def _await_report(self, report_id: str) -> str | None:
        """Poll until the report is processed: its document id, or None when CANCELLED (no data)."""
        delay = self.options.report_poll_interval
        deadline = trio.current_time() + self.options.report_timeout
        while True:
            body, _ = await self.client.get_json(f"{REPORTS_PATH}/{report_id}", limit="getReport")
            status = body.get("processingStatus") if isinstance(body, dict) else None
            if status == "DONE" and body.get("reportDocumentId"):
                return str(body["reportDocumentId"])
            if status == "CANCELLED":
                return None  # cancelled before processing, or no data for the range
            if status == "FATAL":
                raise PermanentError(f"SP-API report {report_id} ({REIMBURSEMENT_REPORT}) ended FATAL"
                                     f" (error document {body.get('reportDocumentId')})", code="FATAL")
            if status not in ("IN_QUEUE", "IN_PROGRESS", "DONE"):
                raise TransientError(f"SP-API report {report_id}: unexpected processingStatus {status!r}")
            if trio.current_time() + delay > deadline:
                raise TransientError(f"SP-API report {report_id} still {status} after "
                                     f"{self.options.report_timeout:g} s")
            await trio.sleep(delay)
            delay = min(delay * 1.5, 60.0)

    async def _read_document(self, document_id: str) -> tuple[list[dict[str, str]], list[str]]:
        """getReportDocument, download the presigned URL (valid 5 min), gunzip, parse; one retry with a new URL."""
        for attempt in range(2):
            body, _ = await self.client.get_json(f"{DOCUMENTS_PATH}/{document_id}", limit="getReportDocument")
            if not isinstance(body, dict) or not body.get("url"):
                raise TransientError(f"SP-API getReportDocument {document_id}: no url")
            try:
                response = await self.downloads.request("GET", str(body["url"]), limit="reportDocumentDownload")
                data = response.content
                # httpx already inflated it if the server sent Content-Encoding: gzip
                if body.get("compressionAlgorithm") == "GZIP" and data[:2] == b"\x1f\x8b":
                    data = gzip.decompress(data)
            except (PermanentError, OSError, EOFError, zlib.error) as exc:
                # an expired URL (403) or a truncated download: a fresh URL, once
                if attempt == 1 or (isinstance(exc, ProviderError) and exc.status != 403):
                    raise TransientError(f"SP-API report document {document_id}: {exc}") from exc
                continue
            return parse_report(decode_report(data, response.headers.get("content-type")))
        raise AssertionError("unreachable")

    @staticmethod
    def _report_records(
        report_id: str, rows: list[dict[str, str]]
    ) -> tuple[list[dict[str, Any]], list[tuple[str | None, str]]]:
        records: list[dict[str, Any]] = []
        failures: list[tuple[str | None, str]] = []
        occurrences: Counter[str] = Counter()
        for row in rows:
            reimbursement = row.get("reimbursement-id", "").strip()
            if not reimbursement:
                failures.append((None, f"report {report_id}: a row without reimbursement-id"))
                continue
            key = f"report:{reimbursement}:{row.get('sku', '')}"
            occurrences[key] += 1
            n = occurrences[key]
            # no report id in the record: the same row read from a later report must hash the same
            records.append({**row, "source": "report", "id": key if n == 1 else f"{key}:{n}"})
        return records, failures
