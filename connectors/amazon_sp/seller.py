"""The simulated selling partner's data: FBA inventory per marketplace, financial events and
reimbursements as SP-API shapes them, SP-API's error body, and the test contract over them.

Not an id-keyed collection: inventory is keyed by marketplace and SKU, and financial events are
immutable (a change is a new event), so the contract here is its own.
"""

from __future__ import annotations

import bisect
import itertools
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from freshd.connectors.simcollection import RecordSimulator, iso
from freshd.connectors.simulator import ApiError, FakeData, Response

MARKETPLACES = {  # id -> (name, currency)
    "ATVPDKIKX0DER": ("Amazon.com", "USD"),
    "A2EUQ1WTGCTBG2": ("Amazon.ca", "CAD"),
    "A1F83G8C2ARO7P": ("Amazon.co.uk", "GBP"),
    "A1PA6795UKMFR9": ("Amazon.de", "EUR"),
    "A13V1IB3VIYZZH": ("Amazon.fr", "EUR"),
    "A1VC38T7YXB528": ("Amazon.co.jp", "JPY"),
}
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


def invalid(message: str, details: str = "") -> ApiError:
    return ApiError(error(400, "InvalidInput", message, details))



def parse_time(value: str, name: str) -> datetime:
    try:
        moment = datetime.fromisoformat(value.strip().replace(" ", "+"))
    except ValueError:
        raise invalid(f"Query parameter [{name}] value is not a valid ISO date-time object") from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).astimezone(UTC)


def sku_id(marketplace: str, sku: str) -> str:
    """The external id the freshd connector gives an inventory summary (the API has none)."""
    return f"{marketplace}:{sku}"


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



class SellerData(RecordSimulator):
    """The seller's records and the test contract (AmazonSPSimulator is one)."""

    marketplaces: tuple[str, ...]
    inventory: dict[str, dict[str, dict[str, Any]]]  # marketplace -> sellerSku -> summary (with details)
    _skus: dict[str, list[str]]  # marketplace -> its SKUs, sorted
    _next_sku: int
    events: list[_Event]  # sorted by _Event.key (posted, then creation order)
    reimbursement_rows: list[dict[str, str]]

    def _code(self, prefix: str, length: int) -> str:
        alphabet = "ABCDEFGHJKLMNPQRSTUVWXYZ0123456789"
        return prefix + "".join(self.fake.rng.choice(alphabet) for _ in range(length))

    def _money(self, currency: str, amount: float) -> dict[str, Any]:
        return {"CurrencyCode": currency, "CurrencyAmount": round(amount, 2)}

    def _seed_seller(self, skus: int, history_days: int, events: int, reimbursements: int) -> None:
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
