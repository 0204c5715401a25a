"""What every SP-API operation shares: the connection's options, the usage plans, error
classification (docs/connectors/amazon_sp.md "Error mapping"), the `payload` envelope, and the
restart of a listing whose pagination token went stale.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urljoin

import httpx
import orjson
import structlog

from freshd.connectors.amazon_sp.auth import LWA_TOKEN_URL
from freshd.connectors.base import ConnectionSettings
from freshd.connectors.errors import Answer, ErrorTable, classify_with, describe
from freshd.errors import AuthExpired, ConfigError, PermanentError, ProviderError, TransientError
from freshd.policies.ratelimit import Rate

log = structlog.get_logger(__name__)

REGIONS = {  # API_FACTS §4.2
    "na": "https://sellingpartnerapi-na.amazon.com",
    "eu": "https://sellingpartnerapi-eu.amazon.com",
    "fe": "https://sellingpartnerapi-fe.amazon.com",
}
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


def utcnow() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: str) -> datetime:
    moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).astimezone(UTC)


# --- options -------------------------------------------------------------------------------------


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
        start = utcnow() - timedelta(days=numbers["history_days"])
        if opts.get("start_date"):
            try:
                start = parse_time(str(opts["start_date"]))
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
