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
import gzip
import itertools
import secrets
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl

import orjson
import trio

from freshd.connectors.simulator import FakeData, Request, Response, SimulatorApp

# operation -> (rate per second, burst), from the models' Usage Plan tables (API_FACTS §4.3-4.6)
USAGE_PLANS: dict[str, tuple[float, float]] = {
    "getInventorySummaries": (2.0, 2),
    "listFinancialEvents": (0.5, 30),
    "createReport": (0.0167, 15),
    "getReport": (2.0, 15),
    "getReportDocument": (0.0167, 15),
}
MARKETPLACES = {  # id -> (name, currency)
    "ATVPDKIKX0DER": ("Amazon.com", "USD"),
    "A2EUQ1WTGCTBG2": ("Amazon.ca", "CAD"),
    "A1F83G8C2ARO7P": ("Amazon.co.uk", "GBP"),
    "A1PA6795UKMFR9": ("Amazon.de", "EUR"),
    "A13V1IB3VIYZZH": ("Amazon.fr", "EUR"),
    "A1VC38T7YXB528": ("Amazon.co.jp", "JPY"),
}
INVENTORY_PAGE = 50  # the real page size
NEXT_TOKEN_TTL = 30.0  # inventory nextToken lifetime (seconds)
FINANCE_TOKEN_TTL = 25 * 60.0  # "Token is not valid, token duration is 25 minutes."
TWO_MINUTES = timedelta(minutes=2)
MAX_WINDOW = timedelta(days=180)
INVENTORY_HORIZON = timedelta(days=548)  # startDateTime no earlier than 18 months ago
DOCUMENT_URL_TTL = 300.0
REIMBURSEMENT_REPORT = "GET_FBA_REIMBURSEMENTS_DATA"
REPORT_COLUMNS = (
    "approval-date", "reimbursement-id", "case-id", "amazon-order-id", "reason", "sku", "fnsku", "asin",
    "product-name", "condition", "currency-unit", "amount-per-unit", "amount-total",
    "quantity-reimbursed-cash", "quantity-reimbursed-inventory", "quantity-reimbursed-total",
    "original-reimbursement-id", "original-reimbursement-type",
)
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
REASONS = ("Lost_Warehouse", "Damaged_Warehouse", "CustomerReturn", "Lost_Inbound", "CustomerServiceIssue",
           "Reimbursement_Reversal", "FeeCorrection")
WORDS = FakeData.WORDS
# error codes the shared fault layer passes -> SP-API's own
_FAULT_CODES = {429: ("QuotaExceeded", "You exceeded your quota for the requested resource."),
                500: ("InternalFailure", "We encountered an internal error. Please try again."),
                503: ("ServiceUnavailable", "Service is temporarily unavailable. Please try again."),
                404: ("NotFound", "Resource not found.")}


def error(status: int, code: str, message: str, details: str = "") -> Response:
    """SP-API's error body; the shared fault layer's generic codes become the provider's."""
    if code in ("simulated_fault", "rate_limited", "rest_no_route") and status in _FAULT_CODES:
        code, message = _FAULT_CODES[status]
    headers = [("x-amzn-RequestId", str(uuid.uuid4()))]
    if status == 403:
        headers.append(("x-amzn-ErrorType", "AccessDeniedException"))
    return Response.json({"errors": [{"code": code, "message": message, "details": details}]}, status, headers)


class ApiError(Exception):
    def __init__(self, response: Response) -> None:
        self.response = response


def invalid(message: str, details: str = "") -> ApiError:
    return ApiError(error(400, "InvalidInput", message, details))


def lwa_error(status: int, code: str, description: str) -> ApiError:
    return ApiError(Response.json({"error": code, "error_description": description}, status))


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: str, name: str) -> datetime:
    try:
        moment = datetime.fromisoformat(value.strip().replace(" ", "+"))
    except ValueError:
        raise invalid(f"Query parameter [{name}] value is not a valid ISO date-time object") from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).astimezone(UTC)


def sku_id(marketplace: str, sku: str) -> str:
    """The external id the freshd connector gives an inventory summary (the API has none)."""
    return f"{marketplace}:{sku}"


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
        rate, burst = self.plans[op]
        now = trio.current_time()
        tokens, stamp = self._buckets.get(op, (burst, now))
        tokens = min(burst, tokens + (now - stamp) * rate)
        if tokens < 1:
            self._buckets[op] = (tokens, now)
            self.throttled += 1
            return False
        self._buckets[op] = (tokens - 1, now)
        return True

    def drain(self, op: str) -> None:
        """Another worker of the same application just spent this operation's whole burst."""
        self._buckets[op] = (0.0, trio.current_time())


_EVENT_SEQ = itertools.count(1)


@dataclass
class _Event:
    posted: datetime
    list_name: str
    body: dict[str, Any]
    seq: int = field(default_factory=lambda: next(_EVENT_SEQ))  # creation order: ties on `posted` stay put

    def key(self) -> tuple[datetime, int]:
        """The listing order, and the position a finance NextToken resumes after."""
        return self.posted, self.seq


@dataclass
class _Report:
    report_id: str
    report_type: str
    marketplaces: list[str]
    start: datetime
    end: datetime
    created: datetime
    created_at: float  # trio clock
    outcome: str = "DONE"  # DONE, CANCELLED or FATAL once processing ends
    document_id: str | None = None


class AmazonSPSimulator:
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
        self.clock = clock or (lambda: datetime.now(UTC))
        self.fake = FakeData(seed)
        self.marketplaces = tuple(marketplaces)
        for marketplace in self.marketplaces:
            if marketplace not in MARKETPLACES:
                raise ValueError(f"unknown marketplace {marketplace}")
        self.next_token_ttl = next_token_ttl
        self.finance_token_ttl = finance_token_ttl
        self.token_lifetime = token_lifetime
        self.report_seconds = report_seconds
        self.quotas = Quotas(enforce=enforce_quotas)
        self.token_requests = 0  # tokens issued (tests/rig.py contract)
        self.last_token_request: tuple[str, dict[str, str]] | None = None  # (content-type, fields), for tests
        self.fail_next_report: str | None = None  # "FATAL" or "CANCELLED": the next report ends so
        self._tokens: dict[str, float] = {}  # access token -> expiry (epoch seconds)
        self._revoked = False
        self._next_tokens: dict[str, tuple[float, dict[str, Any]]] = {}  # token -> (issued, listing state)
        self._reports: dict[str, _Report] = {}
        self._documents: dict[str, tuple[bytes, float]] = {}  # document id -> (gzip body, url expiry)
        # inventory: marketplace -> sellerSku -> summary (with details)
        self.inventory: dict[str, dict[str, dict[str, Any]]] = {m: {} for m in self.marketplaces}
        self._skus: dict[str, list[str]] = {m: [] for m in self.marketplaces}  # sorted
        self._next_sku = 1
        self.events: list[_Event] = []  # sorted by _Event.key (posted, then creation order)
        self.reimbursement_rows: list[dict[str, str]] = []
        self._seed(records, history_days, records if events is None else events,
                   max(records // 10, 3) if reimbursements is None else reimbursements)
        self.app = SimulatorApp(error)
        self.app.actions["expire_tokens"] = self.expire_tokens
        self.app.actions["revoke_tokens"] = self.revoke_tokens
        self.app.route("POST", "/auth/o2/token", self._token)
        self._api("GET", "/fba/inventory/v1/summaries", "getInventorySummaries", self._inventory)
        self._api("GET", "/finances/v0/financialEvents", "listFinancialEvents", self._financial_events)
        self._api("POST", "/reports/2021-06-30/reports", "createReport", self._create_report)
        self._api("GET", "/reports/2021-06-30/reports/{reportId}", "getReport", self._get_report)
        self._api("GET", "/reports/2021-06-30/documents/{documentId}", "getReportDocument", self._get_document)
        self.app.route("GET", "/tortuga-prod-na/{key}", self._download)
        self.app.route("POST", "/_sim/quotas", self._quotas_endpoint)
        self.app.route("POST", "/_sim/mutate", self._mutate_endpoint)
        self.app.route("GET", "/_sim/state", self._state_endpoint)

    # --- data ------------------------------------------------------------------------------------

    def _now(self) -> datetime:
        return self.clock().astimezone(UTC).replace(microsecond=0)

    def _code(self, prefix: str, length: int) -> str:
        alphabet = "ABCDEFGHJKLMNPQRSTUVWXYZ0123456789"
        return prefix + "".join(self.fake.rng.choice(alphabet) for _ in range(length))

    def _money(self, currency: str, amount: float) -> dict[str, Any]:
        return {"CurrencyCode": currency, "CurrencyAmount": round(amount, 2)}

    def _seed(self, skus: int, history_days: int, events: int, reimbursements: int) -> None:
        now = self._now()
        start = now - timedelta(days=history_days)
        for _ in range(skus):
            self._new_sku(start + timedelta(seconds=self.fake.rng.randint(0, history_days * 86400 - 7200)))
        rng = self.fake.rng
        step = (now - timedelta(hours=1) - start) / max(events, 1)
        for i in range(events):
            posted = start + step * i + timedelta(seconds=rng.randint(0, 600))
            self._add_event(posted, rng.choices(("ShipmentEventList", "RefundEventList", "AdjustmentEventList",
                                                 "ServiceFeeEventList", "ProductAdsPaymentEventList"),
                                                (60, 12, 12, 10, 6))[0])
        step = (now - timedelta(hours=2) - start) / max(reimbursements, 1)
        for i in range(reimbursements):
            self._add_reimbursement(start + step * i + timedelta(seconds=rng.randint(0, 3600)))
        self.events.sort(key=_Event.key)

    def _new_sku(self, updated: datetime) -> tuple[str, str]:
        rng = self.fake.rng
        number = self._next_sku
        self._next_sku += 1
        word = rng.choice(WORDS)
        sku = f"{word[:3].upper()}-{number:05d}-{rng.choice(['BK', 'WH', 'RD', 'BL', 'GR'])}"
        asin, fnsku = self._code("B0", 8), self._code("X00", 7)
        name = f"{rng.choice(['Deluxe', 'Basic', 'Pro', 'Mini', 'Ultra'])} {word} {number} - " \
               f"{rng.choice(['Stainless Steel', 'Bamboo', 'Recycled Plastic', 'Aluminium'])}, " \
               f"{rng.choice(['Pack of 2', 'Single', 'Pack of 6', 'Family Size'])}"
        for marketplace in self.marketplaces:
            self.inventory[marketplace][sku] = self._summary(sku, asin, fnsku, name, updated)
            bisect.insort(self._skus[marketplace], sku)
        return sku, asin

    def _summary(self, sku: str, asin: str, fnsku: str, name: str, updated: datetime) -> dict[str, Any]:
        rng = self.fake.rng
        fulfillable = rng.randint(0, 800)
        inbound = [rng.randint(0, 50) for _ in range(3)]
        reserved = [rng.randint(0, 20) for _ in range(3)]
        unfulfillable = [rng.randint(0, 3) for _ in range(6)]
        researching = [rng.randint(0, 2) for _ in range(3)]
        details = {
            "fulfillableQuantity": fulfillable,
            "inboundWorkingQuantity": inbound[0],
            "inboundShippedQuantity": inbound[1],
            "inboundReceivingQuantity": inbound[2],
            "reservedQuantity": {"totalReservedQuantity": sum(reserved),
                                 "pendingCustomerOrderQuantity": reserved[0],
                                 "pendingTransshipmentQuantity": reserved[1],
                                 "fcProcessingQuantity": reserved[2]},
            "researchingQuantity": {"totalResearchingQuantity": sum(researching), "researchingQuantityBreakdown": [
                {"name": name_, "quantity": q} for name_, q in zip(
                    ("researchingQuantityInShortTerm", "researchingQuantityInMidTerm",
                     "researchingQuantityInLongTerm"), researching, strict=True)]},
            "unfulfillableQuantity": {"totalUnfulfillableQuantity": sum(unfulfillable), **dict(zip(
                ("customerDamagedQuantity", "warehouseDamagedQuantity", "distributorDamagedQuantity",
                 "carrierDamagedQuantity", "defectiveQuantity", "expiredQuantity"), unfulfillable, strict=True))},
        }
        total = fulfillable + sum(inbound) + sum(reserved) + sum(unfulfillable) + sum(researching)
        return {"asin": asin, "fnSku": fnsku, "sellerSku": sku, "condition": "NewItem",
                "inventoryDetails": details, "lastUpdatedTime": iso(updated), "productName": name,
                "totalQuantity": total, "stores": []}

    def _order_id(self) -> str:
        rng = self.fake.rng
        return f"{rng.randint(111, 114)}-{rng.randint(1000000, 9999999)}-{rng.randint(1000000, 9999999)}"

    def _add_event(self, posted: datetime, list_name: str) -> _Event:
        rng = self.fake.rng
        marketplace = rng.choice(self.marketplaces)
        market, currency = MARKETPLACES[marketplace]
        sku = rng.choice(self._skus[marketplace]) if self._skus[marketplace] else "SKU-0"
        summary = self.inventory[marketplace].get(sku, {})
        price = rng.uniform(5, 120)
        qty = rng.randint(1, 3)
        charges: list[dict[str, Any]] = [
            {"ChargeType": "Principal", "ChargeAmount": self._money(currency, price * qty)},
            {"ChargeType": "Tax", "ChargeAmount": self._money(currency, price * qty * 0.08)},
            {"ChargeType": "ShippingCharge", "ChargeAmount": self._money(currency, 0)}]
        fees: list[dict[str, Any]] = [
            {"FeeType": "FBAPerUnitFulfillmentFee", "FeeAmount": self._money(currency, -3.22 * qty)},
            {"FeeType": "Commission", "FeeAmount": self._money(currency, -price * qty * 0.15)},
            {"FeeType": "FixedClosingFee", "FeeAmount": self._money(currency, 0)}]
        body: dict[str, Any]
        if list_name == "ShipmentEventList":
            order = self._order_id()
            body = {"AmazonOrderId": order, "SellerOrderId": order, "MarketplaceName": market,
                    "PostedDate": iso(posted), "ShipmentItemList": [{
                        "SellerSKU": sku, "OrderItemId": str(rng.randint(10**13, 10**14 - 1)),
                        "QuantityShipped": qty, "ItemChargeList": charges, "ItemFeeList": fees,
                        "ItemTaxWithheldList": [{"TaxCollectionModel": "MarketplaceFacilitator",
                                                 "TaxesWithheld": [{"ChargeType": "MarketplaceFacilitatorTax-Principal",
                                                                    "ChargeAmount": self._money(
                                                                        currency, -price * qty * 0.08)}]}],
                        "PromotionList": []}]}
        elif list_name == "RefundEventList":
            order = self._order_id()
            body = {"AmazonOrderId": order, "SellerOrderId": order, "MarketplaceName": market,
                    "PostedDate": iso(posted), "ShipmentItemAdjustmentList": [{
                        "SellerSKU": sku, "OrderAdjustmentItemId": str(rng.randint(10**13, 10**14 - 1)),
                        "QuantityShipped": qty,
                        "ItemChargeAdjustmentList": [{**c, "ChargeAmount": self._money(
                            currency, -c["ChargeAmount"]["CurrencyAmount"])} for c in charges],
                        "ItemFeeAdjustmentList": [{**f, "FeeAmount": self._money(
                            currency, -f["FeeAmount"]["CurrencyAmount"] * 0.8)} for f in fees]}]}
        elif list_name == "AdjustmentEventList":
            kind = rng.choice(("ReserveEvent", "PostageBilling", "WAREHOUSE_DAMAGE_EXCEPTION", "SellerRewards"))
            amount = rng.uniform(-40, 40)
            body = {"AdjustmentType": kind, "PostedDate": iso(posted), "StoreName": "",
                    "AdjustmentAmount": self._money(currency, amount), "AdjustmentItemList": []}
        elif list_name == "ServiceFeeEventList":  # the real event has no PostedDate
            body = {"FeeReason": rng.choice(("FBAStorageFee", "FBAInboundTransportationFee", "Subscription")),
                    "FeeList": [{"FeeType": "FBAStorageFee", "FeeAmount": self._money(currency, -rng.uniform(1, 90))}],
                    "SellerSKU": sku, "FnSKU": summary.get("fnSku", ""), "ASIN": summary.get("asin", ""),
                    "FeeDescription": "Monthly inventory storage fee", "StoreName": ""}
        else:  # ProductAdsPaymentEventList: camelCase fields in the real model
            base = rng.uniform(10, 400)
            body = {"postedDate": iso(posted), "transactionType": "Charge",
                    "invoiceId": f"TR{rng.randint(10**9, 10**10 - 1)}",
                    "baseValue": self._money(currency, -base), "taxValue": self._money(currency, 0),
                    "transactionValue": self._money(currency, -base)}
        event = _Event(posted, list_name, body)
        self.events.append(event)
        return event

    def _add_reimbursement(self, approved: datetime) -> None:
        rng = self.fake.rng
        marketplace = rng.choice(self.marketplaces)
        currency = MARKETPLACES[marketplace][1]
        sku = rng.choice(self._skus[marketplace])
        summary = self.inventory[marketplace][sku]
        per_unit = round(rng.uniform(4, 60), 2)
        quantity = rng.randint(1, 4)
        cash = rng.random() < 0.7  # the others are reimbursed in inventory: they show in the report only
        reimbursement_id = str(rng.randint(10**9, 10**10 - 1))
        row = {"approval-date": approved.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S+00:00"),
               "reimbursement-id": reimbursement_id, "case-id": str(rng.randint(10**9, 10**10 - 1))
               if rng.random() < 0.4 else "", "amazon-order-id": self._order_id() if rng.random() < 0.5 else "",
               "reason": rng.choice(REASONS), "sku": sku, "fnsku": summary["fnSku"], "asin": summary["asin"],
               "product-name": summary["productName"], "condition": "New", "currency-unit": currency,
               "amount-per-unit": f"{per_unit:.2f}" if cash else "0",
               "amount-total": f"{per_unit * quantity:.2f}" if cash else "0",
               "quantity-reimbursed-cash": str(quantity if cash else 0),
               "quantity-reimbursed-inventory": str(0 if cash else quantity),
               "quantity-reimbursed-total": str(quantity), "original-reimbursement-id": "",
               "original-reimbursement-type": ""}
        self.reimbursement_rows.append(row)
        if cash:
            body = {"AdjustmentType": "FBAInventoryReimbursement", "PostedDate": iso(approved), "StoreName": "",
                    "AdjustmentAmount": self._money(currency, per_unit * quantity),
                    "AdjustmentItemList": [{"Quantity": str(quantity),
                                            "PerUnitAmount": self._money(currency, per_unit),
                                            "TotalAmount": self._money(currency, per_unit * quantity),
                                            "SellerSKU": sku, "FnSKU": summary["fnSku"],
                                            "ProductDescription": summary["productName"], "ASIN": summary["asin"],
                                            "TransactionNumber": reimbursement_id}]}
            self.events.append(_Event(approved, "AdjustmentEventList", body))

    # --- the test contract (tests/rig.py SimulatorUnderTest) ---------------------------------------

    def count(self, entity: str) -> int:
        """Records a complete sync ends with (reimbursements: report rows + reimbursement event items)."""
        if entity == "inventory_summaries":
            return sum(len(skus) for skus in self.inventory.values())
        if entity == "financial_events":
            return len(self.events)
        if entity == "reimbursements":
            items = sum(max(1, len(e.body.get("AdjustmentItemList") or [])) for e in self.events
                        if e.body.get("AdjustmentType") == "FBAInventoryReimbursement")
            return len(self.reimbursement_rows) + items
        raise KeyError(entity)

    def update_sku(self, marketplace: str, sku: str, **fields: Any) -> dict[str, Any]:
        summary = {**self.inventory[marketplace][sku], **fields, "lastUpdatedTime": iso(self._now())}
        self.inventory[marketplace][sku] = summary
        return summary

    def delete_sku(self, marketplace: str, sku: str) -> None:
        del self.inventory[marketplace][sku]
        self._skus[marketplace].remove(sku)

    def add_event(self, posted: datetime | None = None, list_name: str = "ShipmentEventList") -> dict[str, Any]:
        event = self._add_event(posted or self._now() - timedelta(minutes=10), list_name)
        self.events.sort(key=_Event.key)
        return event.body

    def mutate(self, entity: str) -> dict[str, str | None]:
        """Inventory: one new SKU, one changed, one removed. Financial events are immutable: one new event."""
        if entity == "inventory_summaries":
            marketplace = self.marketplaces[0]
            skus = self._skus[marketplace]
            updated, deleted = skus[0], skus[-1]
            old = self.inventory[marketplace][updated]
            self.update_sku(marketplace, updated, totalQuantity=old["totalQuantity"] + 7,
                            inventoryDetails={**old["inventoryDetails"], "fulfillableQuantity":
                                              old["inventoryDetails"]["fulfillableQuantity"] + 7})
            self.delete_sku(marketplace, deleted)
            created, _ = self._new_sku(self._now())
            return {"created": sku_id(marketplace, created), "updated": sku_id(marketplace, updated),
                    "deleted": sku_id(marketplace, deleted)}
        if entity in ("financial_events", "reimbursements"):
            if entity == "reimbursements":
                self._add_reimbursement(self._now() - timedelta(minutes=10))
                self.events.sort(key=_Event.key)
            else:
                self.add_event()
            return {"created": None, "updated": None, "deleted": None}
        raise KeyError(entity)

    def corrupt(self, entity: str) -> str:
        """A NUL in one inventory summary's productName (its id is returned)."""
        if entity != "inventory_summaries":
            raise KeyError(f"corrupt() supports inventory_summaries, not {entity}")
        marketplace = self.marketplaces[0]
        skus = self._skus[marketplace]
        sku = skus[len(skus) // 2]
        self.update_sku(marketplace, sku, productName="bad\u0000byte")
        return sku_id(marketplace, sku)

    def random_changes(self, count: int) -> dict[str, int]:
        done = {"inventory": 0, "events": 0}
        rng = self.fake.rng
        for _ in range(count):
            if rng.random() < 0.7:
                marketplace = rng.choice(self.marketplaces)
                sku = rng.choice(self._skus[marketplace])
                old = self.inventory[marketplace][sku]
                delta = rng.randint(-5, 5)
                self.update_sku(marketplace, sku, totalQuantity=max(0, old["totalQuantity"] + delta))
                done["inventory"] += 1
            else:
                self.add_event(self._now())
                done["events"] += 1
        return done


    # --- auth --------------------------------------------------------------------------------------

    def expire_tokens(self) -> None:
        """Every access token issued so far is now expired (403 "has expired")."""
        for token in self._tokens:
            self._tokens[token] = 0.0

    def revoke_tokens(self) -> None:
        """The seller revoked the authorization: tokens expire and the refresh token gets invalid_grant."""
        self.expire_tokens()
        self._revoked = True

    def expire_next_tokens(self) -> None:
        """Every outstanding pagination token is now stale (as if 30 s had passed)."""
        for token, (_, state) in list(self._next_tokens.items()):
            self._next_tokens[token] = (-1e12, state)

    async def _token(self, request: Request) -> Response:
        try:
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
        except ApiError as exc:
            return exc.response

    @staticmethod
    def _form(request: Request) -> dict[str, str]:
        kind = request.headers.get("content-type", "")
        if "json" in kind:
            try:
                data = request.json()
            except orjson.JSONDecodeError:
                raise lwa_error(400, "invalid_request", "Malformed request body") from None
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

    # --- reports -------------------------------------------------------------------------------------

    def _create_report(self, request: Request) -> Response:
        try:
            spec = request.json()
        except orjson.JSONDecodeError:
            raise invalid("Invalid Input", "The request body is not valid JSON") from None
        if not isinstance(spec, dict) or not spec.get("reportType"):
            raise invalid("Invalid Input", "reportType is required")
        marketplaces = spec.get("marketplaceIds")
        if not isinstance(marketplaces, list) or not marketplaces:
            raise invalid("Invalid Input", "marketplaceIds is required")
        unknown = [m for m in marketplaces if m not in self.marketplaces]
        if unknown:
            raise invalid("Invalid Input", f"Invalid marketplaceIds: {', '.join(map(str, unknown))}")
        now = self._now()
        end = parse_time(spec["dataEndTime"], "dataEndTime") if spec.get("dataEndTime") else now
        start = parse_time(spec["dataStartTime"], "dataStartTime") if spec.get("dataStartTime") \
            else end - timedelta(days=30)
        if start >= end:
            raise invalid("Invalid Input", "dataStartTime must be before dataEndTime")
        report_id = str(self.fake.rng.randint(10**10, 10**11 - 1))
        report = _Report(report_id, str(spec["reportType"]), [str(m) for m in marketplaces], start, end, now,
                         trio.current_time())
        if self.fail_next_report:
            report.outcome, self.fail_next_report = self.fail_next_report, None
        self._reports[report_id] = report
        return Response.json({"reportId": report_id}, 202)

    def _report_rows(self, report: _Report) -> list[dict[str, str]]:
        if report.report_type != REIMBURSEMENT_REPORT:
            return []
        return [r for r in self.reimbursement_rows
                if report.start <= parse_time(r["approval-date"], "approval-date") <= report.end]

    def _get_report(self, request: Request) -> Response:
        report = self._reports.get(request.params["reportId"])
        if report is None:
            raise ApiError(error(404, "NotFound", "Report not found", f"reportId {request.params['reportId']}"))
        elapsed = trio.current_time() - report.created_at
        body: dict[str, Any] = {
            "reportId": report.report_id, "reportType": report.report_type, "marketplaceIds": report.marketplaces,
            "dataStartTime": iso(report.start), "dataEndTime": iso(report.end), "createdTime": iso(report.created),
        }
        if elapsed < self.report_seconds / 2:
            body["processingStatus"] = "IN_QUEUE"
        elif elapsed < self.report_seconds:
            body["processingStatus"] = "IN_PROGRESS"
            body["processingStartTime"] = iso(report.created)
        else:
            rows = self._report_rows(report)
            status = report.outcome if report.outcome != "DONE" or rows else "CANCELLED"  # no data: cancelled
            body.update(processingStatus=status, processingStartTime=iso(report.created),
                        processingEndTime=iso(self._now()))
            if status in ("DONE", "FATAL"):
                if report.document_id is None:
                    report.document_id = f"amzn1.spdoc.1.4.na.{uuid.uuid4()}"
                    if status == "DONE":
                        self._documents[report.document_id] = (gzip.compress(self._render(rows)), 0.0)
                    else:  # FATAL reports come with a document describing the error
                        self._documents[report.document_id] = (gzip.compress(orjson.dumps(
                            {"errorDetails": "Report processing failed: internal error"})), 0.0)
                body["reportDocumentId"] = report.document_id
        return Response.json(body)

    @staticmethod
    def _render(rows: list[dict[str, str]]) -> bytes:
        lines = ["\t".join(REPORT_COLUMNS)]
        lines += ["\t".join(row[c] for c in REPORT_COLUMNS) for row in rows]
        return ("\n".join(lines) + "\n").encode("utf-8")

    def _get_document(self, request: Request) -> Response:
        document_id = request.params["documentId"]
        stored = self._documents.get(document_id)
        if stored is None:
            raise ApiError(error(404, "NotFound", "Report document not found", f"reportDocumentId {document_id}"))
        expires = trio.current_time() + DOCUMENT_URL_TTL
        self._documents[document_id] = (stored[0], expires)
        signature = secrets.token_hex(32)
        url = (f"{request.scheme}://{request.host}/tortuga-prod-na/{document_id}?X-Amz-Algorithm=AWS4-HMAC-SHA256"
               f"&X-Amz-Date={self._now().strftime('%Y%m%dT%H%M%SZ')}&X-Amz-SignedHeaders=host"
               f"&X-Amz-Expires={int(DOCUMENT_URL_TTL)}&X-Amz-Signature={signature}")
        return Response.json({"reportDocumentId": document_id, "url": url, "compressionAlgorithm": "GZIP"})

    async def _download(self, request: Request) -> Response:
        stored = self._documents.get(request.params["key"])
        if stored is None or not request.arg("X-Amz-Signature"):
            return Response(403, b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>AccessDenied</Code>"
                                 b"<Message>Access Denied</Message></Error>", [("content-type", "application/xml")])
        if trio.current_time() > stored[1]:
            return Response(403, b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>AccessDenied</Code>"
                                 b"<Message>Request has expired</Message></Error>",
                            [("content-type", "application/xml")])
        return Response(200, stored[0], [("content-type", "application/octet-stream")])

    # --- control -------------------------------------------------------------------------------------

    async def _quotas_endpoint(self, request: Request) -> Response:
        spec = request.json() or {}
        if "enforce" in spec:
            self.quotas.enforce = bool(spec["enforce"])
        for op, plan in (spec.get("plans") or {}).items():
            self.quotas.plans[str(op)] = (float(plan["rate"]), float(plan.get("burst", 1)))
        return Response.json({"enforce": self.quotas.enforce, "throttled": self.quotas.throttled,
                              "plans": {op: {"rate": r, "burst": b} for op, (r, b) in self.quotas.plans.items()}})

    async def _mutate_endpoint(self, request: Request) -> Response:
        body = request.json() or {}
        return Response.json(self.random_changes(int(body.get("count", 1))))

    async def _state_endpoint(self, request: Request) -> Response:
        return Response.json({e: self.count(e) for e in ("inventory_summaries", "financial_events",
                                                         "reimbursements")})
