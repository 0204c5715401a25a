"""What every SP-API operation shares: the connection's options, the usage plans, error
classification (docs/connectors/amazon_sp.md "Error mapping"), the `payload` envelope, and the
restart of a listing whose pagination token went stale.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urljoin

import httpx
import orjson
import structlog

from freshd.connectors.amazon_sp.auth import LWA_TOKEN_URL
from freshd.connectors.base import FRAMEWORK_OPTIONS, ConnectionSettings, Problems, SyncMode
from freshd.connectors.cursors import moment
from freshd.connectors.errors import Answer, ErrorTable, classify_with, describe
from freshd.connectors.schema import build, rules
from freshd.errors import AuthExpired, ConfigError, ConfigErrors, PermanentError, ProviderError, TransientError
from freshd.policies.ratelimit import Rate

log = structlog.get_logger(__name__)

REGIONS = {  # API_FACTS §4.2
    "na": "https://sellingpartnerapi-na.amazon.com",
    "eu": "https://sellingpartnerapi-eu.amazon.com",
    "fe": "https://sellingpartnerapi-fe.amazon.com",
}
MAX_RESTARTS = 3  # a listing whose pagination token keeps expiring gives up after this many restarts
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


def utcnow() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


# --- options -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SPOptions:
    """A connection's options as written (docs/connectors/amazon_sp.md "Config"), built by the schema
    engine (`AmazonSPConnector.options_type`): every problem named at once; the values the code reads
    (the marketplaces, the start, the lookback) are its properties."""

    marketplace_ids: str | tuple[str, ...] = ()  # a list, or a comma-separated string: at least one
    region: str | None = None  # picks the host when the connection's base_url is empty
    token_url: str = LWA_TOKEN_URL  # a path is resolved against the SP-API host (simulators, proxies)
    start_date: str | None = None  # ISO 8601; default: history_days ago
    history_days: float = 730  # first sync of finances/reimbursements reaches this far back (or start_date)
    finances_lookback_hours: float = 48.0
    inventory_full_interval: float = 86400.0
    report_interval: float = 4 * 3600.0
    report_poll_interval: float = 10.0
    report_timeout: float = 3600.0
    reimbursement_sources: tuple[str, ...] = SOURCES

    def __post_init__(self) -> None:
        rules(("region", self.region is None or self.region in REGIONS,
               f"unknown region {self.region!r}; valid: {', '.join(REGIONS)}"),
              ("marketplace_ids", bool(self.marketplaces),
               "at least one marketplace id is required, e.g. [\"ATVPDKIKX0DER\"]"),
              *((key, getattr(self, key) >= 0, f"expected a number >= 0, got {getattr(self, key)!r}")
                for key in ("history_days", "finances_lookback_hours", "inventory_full_interval", "report_interval",
                            "report_poll_interval", "report_timeout")),
              ("start_date", not self.start_date or _date(self.start_date) is not None,
               f"expected an ISO 8601 date, got {self.start_date!r}"),
              ("reimbursement_sources", set(self.reimbursement_sources) <= set(SOURCES),
               f"expected a subset of {list(SOURCES)}, got {list(self.reimbursement_sources)!r}"))

    @property
    def marketplaces(self) -> tuple[str, ...]:
        raw = self.marketplace_ids
        return tuple(m.strip() for m in (raw.split(",") if isinstance(raw, str) else raw) if m.strip())

    @property
    def start(self) -> datetime:
        """Where a first sync of financial events and reimbursements starts."""
        given = _date(self.start_date) if self.start_date else None
        return given or utcnow() - timedelta(days=self.history_days)

    def since(self, watermark: Any, mode: SyncMode) -> datetime:
        """Where a finance or report pass starts: `start` for a full sync or a first one, else the
        watermark (a checkpoint's time) minus `finances_lookback_hours`, for events that post late."""
        after = moment(watermark)
        return self.start if mode is SyncMode.FULL or after is None else \
            after - timedelta(hours=self.finances_lookback_hours)


def _date(text: str) -> datetime | None:
    """An ISO 8601 date or time (naive: UTC), to the second; None if it is not one."""
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).astimezone(UTC).replace(microsecond=0)


@dataclass(frozen=True, slots=True)
class Options(SPOptions):
    """The options with the host they resolve to: `base_url` from the connection or the region,
    `token_url` joined to it when it is a path."""

    base_url: str = ""

    @classmethod
    def parse(cls, settings: ConnectionSettings) -> Options:
        """The connection's options (ConfigError, or ConfigErrors naming each key)."""
        where = f"connection {settings.name}"
        problems = Problems()
        missing = [k for k in ("refresh_token", "client_id", "client_secret") if not settings.credentials.get(k)]
        if missing:
            problems.add(f"missing credential(s): {', '.join(missing)}", where=where)
        declared: SPOptions | None = None
        try:
            declared = build(SPOptions, settings.options, f"{where}: options", extra=FRAMEWORK_OPTIONS)
        except ConfigError as exc:
            problems.errors.extend(exc.errors if isinstance(exc, ConfigErrors) else [exc])
        region = str(settings.options.get("region") or "")
        base_url = (settings.base_url or REGIONS.get(region, "")).rstrip("/")
        if not base_url and not region:  # an unknown region is the engine's to report
            problems.add("base_url (the SP-API host) or options.region is required", where=where)
        elif region in REGIONS and base_url in REGIONS.values() and base_url != REGIONS[region]:
            problems.add(f"base_url {base_url} is not the {region} endpoint", where=f"{where}: options.region")
        problems.check()
        assert declared is not None  # else problems.check() raised
        token_url = declared.token_url
        if not token_url.startswith(("http://", "https://")):
            token_url = urljoin(base_url + "/", token_url)  # a path on the SP-API host
        values = {f.name: getattr(declared, f.name) for f in fields(SPOptions)}
        return cls(**{**values, "token_url": token_url}, base_url=base_url)


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
    request: httpx.Request | None = None
    with contextlib.suppress(RuntimeError):  # a Response built by hand (tests)
        request = response.request
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


# `{"errors": [{"code", "message", "details"}]}`
SP_API_ERRORS = ErrorTable("SP-API", code=("errors.0.code",), message=("errors.0.message",),
                           detail=("errors.0.details",), rate_limited=frozenset({"QuotaExceeded"}),
                           transient_statuses=frozenset({408}), hook=_sp_api)
classify = classify_with(SP_API_ERRORS)


def payload(body: Any, what: str) -> dict[str, Any]:
    """`payload` of a 200; the API sometimes answers 200 with only `errors`."""
    if isinstance(body, dict) and isinstance(body.get("payload"), dict):
        return body["payload"]  # type: ignore[no-any-return]
    if isinstance(body, dict) and body.get("errors"):
        first = body["errors"][0] if isinstance(body["errors"], list) and body["errors"] else {}
        raise PermanentError(f"SP-API {what}: {first}", code=str(first.get("code")) if isinstance(first, dict)
                             else None)
    raise TransientError(f"SP-API {what}: no payload in the response")


# --- listings ------------------------------------------------------------------------------------


def digest(data: Any, size: int = 10) -> str:
    return hashlib.blake2b(orjson.dumps(data, option=orjson.OPT_SORT_KEYS), digest_size=size).hexdigest()


class Once:
    """What this run already emitted (id -> content digest): a restarted listing re-emits only changes."""

    def __init__(self) -> None:
        self._seen: dict[str, str] = {}

    def fresh(self, records: Sequence[Any]) -> list[dict[str, Any]]:
        out = []
        for record in records:
            key, content = str(record.get("id")), digest(record, 12)
            if self._seen.get(key) != content:
                self._seen[key] = content
                out.append(record)
        return out


async def restarting(listing: Callable[[], Awaitable[None]], gives_up: str, **where: Any) -> None:
    """Run `listing`, again from its start when its pagination token went stale (the tokens die
    fast: a slow writer or a long throttle outlives them); after MAX_RESTARTS restarts it gives up
    with `gives_up` (``{n}``: the tokens that expired)."""
    for attempt in range(MAX_RESTARTS + 1):
        try:
            await listing()
            return
        except StaleNextToken as exc:
            log.info("amazon_sp.listing_restarted", attempt=attempt + 1, error=str(exc), **where)
    raise TransientError(gives_up.format(n=MAX_RESTARTS + 1))
