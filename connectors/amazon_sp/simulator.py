"""An Amazon Selling Partner API simulator: LWA tokens, FBA inventory, finances v0, reports 2021-06-30.

Faithful to what a client sees (API_FACTS §4), on one loopback server:

* **LWA** ``POST /auth/o2/token`` (form or JSON body, as the Python and Java SDKs
  send): ``grant_type=refresh_token`` with ``refresh_token``/``client_id``/
  ``client_secret`` gives ``{"access_token": "Atza|…", "token_type": "bearer",
  "expires_in": 3600, "refresh_token": "Atzr|…"}``; errors are LWA's
  ``{"error", "error_description"}`` (``invalid_client`` 401, ``invalid_grant`` 400).
* **SP-API** calls need ``x-amz-access-token``; an expired one gets 403
  ``Unauthorized`` "The access token you provided has expired.", an unknown one
  "… is revoked, malformed or invalid.".  Every error body is ``{"errors": [{"code",
  "message", "details"}]}``; every response carries ``x-amzn-RequestId`` and, except
  429s, ``x-amzn-RateLimit-Limit`` (the operation's rate).
* ``GET /fba/inventory/v1/summaries``: ``granularityType=Marketplace``,
  ``granularityId``, ``marketplaceIds`` (exactly one), ``details``, ``startDateTime``
  (changed since; not older than 18 months), ``sellerSkus``/``sellerSku``; 50 per
  page by SKU; top-level ``pagination.nextToken`` that expires 30 s after it was
  issued (400 ``InvalidInput`` "Next token is invalid or expired").
* ``GET /finances/v0/financialEvents``: ``PostedAfter``/``PostedBefore`` (each must
  be at least 2 minutes before the request, else 400; more than 180 days apart
  gives an *empty* 200, as the real API does), ``MaxResultsPerPage`` 1..100,
  ``NextToken`` inside ``payload`` (expires after 25 minutes; it resumes after the last event
  served, so pages never overlap even when events are posted between pages).  Event lists as the
  real payload has them, ServiceFeeEvent without a PostedDate.
* Reports: ``POST /reports/2021-06-30/reports`` (202 ``{"reportId"}``), ``GET
  …/reports/{id}`` (IN_QUEUE, IN_PROGRESS, then DONE after ``report_seconds``;
  CANCELLED when the range has no data, FATAL when a test asks), ``GET
  …/documents/{id}`` (a presigned URL valid 5 minutes, ``compressionAlgorithm:
  GZIP``), and the URL itself serving the gzipped tab-separated
  ``GET_FBA_REIMBURSEMENTS_DATA`` report.
* Usage plans: per operation token buckets (the real rates), enforced with 429
  ``QuotaExceeded`` when ``enforce_quotas`` is on (constructor, or
  ``POST /_sim/quotas {"enforce": true}``); off by default so other tests are not slowed.

Test hooks beyond the shared ``/_sim/faults``: ``expire_tokens``/``revoke_tokens``
actions, ``expire_next_tokens()``, ``quotas.drain(op)`` (another worker spent the
quota), ``fail_next_report`` ("FATAL"/"CANCELLED"), ``/_sim/mutate``, ``/_sim/state``.

Known deviations: no SigV4 check (UNCONFIRMED whether still required), one
selling partner per simulator, report document URLs point back at this server.
"""

from __future__ import annotations

import bisect
import secrets
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl

import trio

from freshd.connectors.amazon_sp.seller import MARKETPLACES, error, invalid, parse_time, sku_id
from freshd.connectors.amazon_sp.sim_reports import REPORT_COLUMNS, Reports
from freshd.connectors.simulator import ApiError, Request, Response, SimulatorApp, take_token

__all__ = ["REPORT_COLUMNS", "AmazonSPSimulator", "error", "sku_id"]  # tests import these here

# operation -> (rate per second, burst), from the models' Usage Plan tables (API_FACTS §4.3-4.6)
USAGE_PLANS: dict[str, tuple[float, float]] = {
    "getInventorySummaries": (2.0, 2),
    "listFinancialEvents": (0.5, 30),
    "createReport": (0.0167, 15),
    "getReport": (2.0, 15),
    "getReportDocument": (0.0167, 15),
}
INVENTORY_PAGE = 50  # the real page size
NEXT_TOKEN_TTL = 30.0  # inventory nextToken lifetime (seconds)
FINANCE_TOKEN_TTL = 25 * 60.0  # "Token is not valid, token duration is 25 minutes."
TWO_MINUTES = timedelta(minutes=2)
MAX_WINDOW = timedelta(days=180)
INVENTORY_HORIZON = timedelta(days=548)  # startDateTime no earlier than 18 months ago
EVENT_LISTS = (
    "ShipmentEventList", "RefundEventList", "GuaranteeClaimEventList", "ChargebackEventList",
    "PayWithAmazonEventList", "ServiceProviderCreditEventList", "RetrochargeEventList",
    "RentalTransactionEventList", "ProductAdsPaymentEventList", "ServiceFeeEventList",
    "SellerDealPaymentEventList", "DebtRecoveryEventList", "LoanServicingEventList", "AdjustmentEventList",
    "SAFETReimbursementEventList", "SellerReviewEnrollmentPaymentEventList", "FBALiquidationEventList",
    "CouponPaymentEventList", "ImagingServicesFeeEventList", "NetworkComminglingTransactionEventList",
    "AffordabilityExpenseEventList", "AffordabilityExpenseReversalEventList", "RemovalShipmentEventList",
    "RemovalShipmentAdjustmentEventList", "TrialShipmentEventList", "TDSReimbursementEventList",
    "TaxWithholdingEventList", "ValueAddedServiceChargeEventList",
)


def lwa_error(status: int, code: str, description: str) -> ApiError:
    return ApiError(Response.json({"error": code, "error_description": description}, status))



@dataclass
class Quotas:
    """One token bucket per operation (per selling partner and application, as the real plans are)."""

    enforce: bool = False
    plans: dict[str, tuple[float, float]] = field(default_factory=lambda: dict(USAGE_PLANS))
    throttled: int = 0  # 429s served, for tests
    _buckets: dict[str, tuple[float, float]] = field(default_factory=dict)

    def take(self, op: str) -> bool:
        if not self.enforce or op not in self.plans:
            return True
        if take_token(self._buckets, op, *self.plans[op], trio.current_time()):
            return True
        self.throttled += 1
        return False

    def drain(self, op: str) -> None:
        """Another worker of the same application just spent this operation's whole burst."""
        self._buckets[op] = (0.0, trio.current_time())


class AmazonSPSimulator(Reports):
    def __init__(
        self,
        records: int = 100,
        seed: int = 1,
        credentials: dict[str, str] | None = None,
        *,
        marketplaces: tuple[str, ...] = ("ATVPDKIKX0DER",),
        history_days: int = 400,
        events: int | None = None,
        reimbursements: int | None = None,
        enforce_quotas: bool = False,
        next_token_ttl: float = NEXT_TOKEN_TTL,
        finance_token_ttl: float = FINANCE_TOKEN_TTL,
        token_lifetime: int = 3600,
        report_seconds: float = 0.3,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        creds = credentials or {}
        self.client_id = creds.get("client_id", "amzn1.application-oa2-client.demo")
        self.client_secret = creds.get("client_secret", "amzn1.oa2-cs.v1.demo")
        self.refresh_token = creds.get("refresh_token", "Atzr|demo-refresh-token")
        super().__init__(seed, clock)
        self.marketplaces = tuple(marketplaces)
        for marketplace in self.marketplaces:
            if marketplace not in MARKETPLACES:
                raise ValueError(f"unknown marketplace {marketplace}")
        self.next_token_ttl = next_token_ttl
        self.finance_token_ttl = finance_token_ttl
        self.token_lifetime = token_lifetime
        self.report_seconds = report_seconds
        self.quotas = Quotas(enforce=enforce_quotas)
        self.last_token_request: tuple[str, dict[str, str]] | None = None  # (content-type, fields), for tests
        self.fail_next_report: str | None = None  # "FATAL" or "CANCELLED": the next report ends so
        self._tokens: dict[str, float] = {}  # access token -> expiry (epoch seconds)
        self._revoked = False
        self._next_tokens: dict[str, tuple[float, dict[str, Any]]] = {}  # token -> (issued, listing state)
        self._reports, self._documents = {}, {}
        self.inventory = {m: {} for m in self.marketplaces}
        self._skus = {m: [] for m in self.marketplaces}
        self._next_sku = 1
        self.events, self.reimbursement_rows = [], []
        self._seed_seller(records, history_days, records if events is None else events,
                   max(records // 10, 3) if reimbursements is None else reimbursements)
        self.app = SimulatorApp(error, changes=self.random_changes, state=self._state,
                                expire_tokens=self.expire_tokens, revoke_tokens=self.revoke_tokens)
        self.app.route("POST", "/auth/o2/token", self._token)
        self._api("GET", "/fba/inventory/v1/summaries", "getInventorySummaries", self._inventory)
        self._api("GET", "/finances/v0/financialEvents", "listFinancialEvents", self._financial_events)
        self._api("POST", "/reports/2021-06-30/reports", "createReport", self._create_report)
        self._api("GET", "/reports/2021-06-30/reports/{reportId}", "getReport", self._get_report)
        self._api("GET", "/reports/2021-06-30/documents/{documentId}", "getReportDocument", self._get_document)
        self.app.route("GET", "/tortuga-prod-na/{key}", self._download)
        self.app.route("POST", "/_sim/quotas", self._quotas_endpoint)

    # --- auth --------------------------------------------------------------------------------------

    def expire_tokens(self) -> None:
        """Every access token issued so far is now expired (403 "has expired")."""
        self._tokens = dict.fromkeys(self._tokens, 0.0)

    def revoke_tokens(self) -> None:
        """The seller revoked the authorization: tokens expire and the refresh token gets invalid_grant."""
        self.expire_tokens()
        self._revoked = True

    def expire_next_tokens(self) -> None:
        """Every outstanding pagination token is now stale (as if 30 s had passed)."""
        for token, (_, state) in list(self._next_tokens.items()):
            self._next_tokens[token] = (-1e12, state)

    async def _token(self, request: Request) -> Response:  # LWA errors: ApiError, served by the router
        form = self._form(request)
        self.last_token_request = (request.headers.get("content-type", ""), form)
        if form.get("grant_type") not in ("refresh_token", "client_credentials"):
            raise lwa_error(400, "unsupported_grant_type", "The authorization grant type is not supported "
                                                            "by the authorization server")
        if form.get("client_id") != self.client_id or form.get("client_secret") != self.client_secret:
            raise lwa_error(401, "invalid_client", "Client authentication failed")
        if form["grant_type"] == "refresh_token":
            if not form.get("refresh_token"):
                raise lwa_error(400, "invalid_request", "The request is missing a required parameter : "
                                                        "refresh_token")
            if self._revoked or form["refresh_token"] != self.refresh_token:
                raise lwa_error(400, "invalid_grant", "The request has an invalid grant parameter : "
                                                      "refresh_token")
        token = "Atza|" + secrets.token_urlsafe(48)
        self._tokens[token] = self._now().timestamp() + self.token_lifetime
        self.token_requests += 1
        body: dict[str, Any] = {"access_token": token, "token_type": "bearer", "expires_in": self.token_lifetime}
        if form["grant_type"] == "refresh_token":
            body["refresh_token"] = self.refresh_token
        return Response.json(body)

    @staticmethod
    def _form(request: Request) -> dict[str, str]:
        kind = request.headers.get("content-type", "")
        if "json" in kind:
            data = request.json(lwa_error(400, "invalid_request", "Malformed request body"))
            return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}
        return dict(parse_qsl(request.body.decode("utf-8", "replace"), keep_blank_values=True))

    def _authenticate(self, request: Request) -> None:
        token = request.headers.get("x-amz-access-token")
        expiry = self._tokens.get(token or "")
        if expiry is None:
            raise ApiError(error(403, "Unauthorized", "Access to requested resource is denied.",
                                 "The access token you provided is revoked, malformed or invalid."))
        if expiry <= self._now().timestamp():
            raise ApiError(error(403, "Unauthorized", "Access to requested resource is denied.",
                                 "The access token you provided has expired."))

    def _api(self, method: str, pattern: str, op: str, handler: Callable[[Request], Response]) -> None:
        async def serve(request: Request) -> Response:
            try:
                self._authenticate(request)
                if not self.quotas.take(op):
                    return error(429, "QuotaExceeded", "You exceeded your quota for the requested resource.")
                response = handler(request)
            except ApiError as exc:
                response = exc.response
            if not any(k.lower() == "x-amzn-requestid" for k, _ in response.headers):
                response.headers.append(("x-amzn-RequestId", str(uuid.uuid4())))
            if op in self.quotas.plans and response.status != 429:  # the models declare it on 2xx/400/404
                response.headers.append(("x-amzn-RateLimit-Limit", f"{self.quotas.plans[op][0]:g}"))
            return response

        self.app.route(method, pattern, serve)

    # --- FBA inventory -----------------------------------------------------------------------------

    def _issue(self, state: dict[str, Any]) -> str:
        token = secrets.token_urlsafe(24)
        self._next_tokens[token] = (trio.current_time(), state)
        if len(self._next_tokens) > 10_000:  # forget the oldest
            for stale in list(self._next_tokens)[:1000]:
                del self._next_tokens[stale]
        return token

    def _redeem(self, token: str, ttl: float, message: str) -> dict[str, Any]:
        issued = self._next_tokens.get(token)
        if issued is None or trio.current_time() - issued[0] > ttl:
            raise invalid(message)
        return issued[1]

    def _inventory(self, request: Request) -> Response:
        if request.arg("granularityType") != "Marketplace":
            raise invalid("Invalid granularityType", "granularityType must be Marketplace")
        marketplace_ids = [m for m in (request.arg("marketplaceIds") or "").split(",") if m]
        granularity_id = request.arg("granularityId")
        if len(marketplace_ids) != 1:
            raise invalid("Invalid Input", "marketplaceIds must contain exactly one marketplace")
        marketplace = marketplace_ids[0]
        if marketplace not in self.inventory or granularity_id != marketplace:
            raise invalid("Invalid Input", f"Invalid granularityId or marketplaceIds: {granularity_id}")
        details = (request.arg("details") or "false").lower() == "true"
        since: datetime | None = None
        if raw_since := request.arg("startDateTime"):
            since = parse_time(raw_since, "startDateTime")
            if since < self._now() - INVENTORY_HORIZON:
                raise invalid("Query startDateTime cannot be earlier than 18 months.")
        skus = self._skus[marketplace]
        after = ""
        if (token := request.arg("nextToken")) and not self.app.faults.loop:
            state = self._redeem(token, self.next_token_ttl, "Next token is invalid or expired")
            after = state["after"]
        if since is None and (wanted := request.arg("sellerSkus") or request.arg("sellerSku")):
            chosen = set(wanted.split(",")) if request.arg("sellerSkus") else {wanted}
            candidates = [s for s in skus if s in chosen]
        else:
            candidates = skus[bisect.bisect_right(skus, after):] if after else list(skus)
        page: list[dict[str, Any]] = []
        last = ""
        for sku in candidates:
            summary = self.inventory[marketplace][sku]
            last = sku
            if since is not None and parse_time(summary["lastUpdatedTime"], "lastUpdatedTime") < since:
                continue
            page.append(summary if details else {k: v for k, v in summary.items() if k != "inventoryDetails"})
            if len(page) == INVENTORY_PAGE:
                break
        more = bool(last) and bisect.bisect_right(skus, last) < len(skus) and len(page) == INVENTORY_PAGE
        body: dict[str, Any] = {"payload": {"granularity": {"granularityType": "Marketplace",
                                                            "granularityId": marketplace},
                                            "inventorySummaries": page}}
        if more:
            body["pagination"] = {"nextToken": self._issue({"after": last})}
        return Response.json(body)

    # --- finances ------------------------------------------------------------------------------------

    def _financial_events(self, request: Request) -> Response:
        now = self._now()
        if (token := request.arg("NextToken")) and not self.app.faults.loop:
            state = self._redeem(token, self.finance_token_ttl, "Token is not valid, token duration is 25 minutes.")
        else:
            state = self._finance_query(request, now)
        after, before = datetime.fromisoformat(state["after"]), datetime.fromisoformat(state["before"])
        per_page = int(state["per_page"])
        events: dict[str, list[dict[str, Any]]] = {name: [] for name in EVENT_LISTS}
        body: dict[str, Any] = {"payload": {"FinancialEvents": events}}
        if before - after > MAX_WINDOW:
            return Response.json(body)  # the real API answers an over-long range with nothing
        # keyset paging: a NextToken resumes strictly after the last event it served, so pages never
        # overlap and events that existed when the listing started are never skipped, even when
        # events are added (anywhere in the window) between two pages
        keys = [e.key() for e in self.events]
        lo, hi = bisect.bisect_left(keys, (after, 0)), bisect.bisect_right(keys, (before, sys.maxsize))
        start = lo
        if "last" in state:
            last = (datetime.fromisoformat(state["last"][0]), int(state["last"][1]))
            start = max(lo, bisect.bisect_right(keys, last))
        chunk = self.events[start:min(hi, start + per_page)]
        for event in chunk:
            events[event.list_name].append(event.body)
        if start + per_page < hi:
            tail = chunk[-1]
            body["payload"]["NextToken"] = self._issue({**state, "last": [tail.posted.isoformat(), tail.seq]})
        return Response.json(body)

    def _finance_query(self, request: Request, now: datetime) -> dict[str, Any]:
        raw_per_page = request.arg("MaxResultsPerPage") or "100"
        try:
            per_page = int(raw_per_page)
        except ValueError:
            raise invalid("Invalid Input", "MaxResultsPerPage must be an integer") from None
        if not 1 <= per_page <= 100:
            raise invalid("Invalid Input", "MaxResultsPerPage must be between 1 and 100")
        raw_after, raw_before = request.arg("PostedAfter"), request.arg("PostedBefore")
        latest = now - TWO_MINUTES
        before = parse_time(raw_before, "PostedBefore") if raw_before else latest
        if raw_before and not raw_after:
            raise invalid("Invalid Input", "PostedAfter is required when PostedBefore is specified")
        after = parse_time(raw_after, "PostedAfter") if raw_after else before - timedelta(days=1)
        if after > latest:
            raise invalid("Date range is invalid. PostedAfter date must be at least 2 minutes before the time "
                          "of the request.")
        if before > latest:
            raise invalid("Date range is invalid. PostedBefore date must be at least 2 minutes before the time "
                          "of the request.")
        if before <= after:
            raise invalid("Date range is invalid. PostedBefore date must be later than PostedAfter date.")
        return {"after": after.isoformat(), "before": before.isoformat(), "per_page": per_page}

    # --- control -------------------------------------------------------------------------------------

    async def _quotas_endpoint(self, request: Request) -> Response:
        spec = request.json() or {}
        if "enforce" in spec:
            self.quotas.enforce = bool(spec["enforce"])
        for op, plan in (spec.get("plans") or {}).items():
            self.quotas.plans[str(op)] = (float(plan["rate"]), float(plan.get("burst", 1)))
        return Response.json({"enforce": self.quotas.enforce, "throttled": self.quotas.throttled,
                              "plans": {op: {"rate": r, "burst": b} for op, (r, b) in self.quotas.plans.items()}})

    def _state(self) -> dict[str, int]:
        return {e: self.count(e) for e in ("inventory_summaries", "financial_events", "reimbursements")}
