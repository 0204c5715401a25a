"""Amazon Selling Partner API (SP-API): FBA inventory, financial events, reimbursements.

Sections, in the order every provider module keeps them: auth, error
classification, streams, sync.  The parts live next door: auth.py (Login with
Amazon), api.py (options, usage plans, error classification), finances.py (the
financial event windows), reports.py (reimbursements).

* **Auth**: Login with Amazon refresh grant; the access token goes in
  ``x-amz-access-token``.  An expired or rejected access token is a 403
  ``Unauthorized`` whose details name the access token: AuthExpired, so the
  framework refreshes once.
* **Usage plans**: every request names its operation (``limit="getInventorySummaries"``
  …) and the class's `rate_limits` are the published plans; the gate adopts
  ``x-amzn-RateLimit-Limit`` when the API sends it.  A 429 ``QuotaExceeded``
  carries no Retry-After, so the wait is one refill interval of that
  operation's plan (2 s for listFinancialEvents, 60 s for createReport).
* **inventory_summaries** (``GET /fba/inventory/v1/summaries``, ``details=true``):
  one listing per marketplace by the listing engine, incremental by ``startDateTime``
  (the listing's start, 5 minutes of overlap).  That filter misses inbound-quantity
  changes and deletions, so at most every ``inventory_full_interval`` (default 24 h)
  an incremental sync lists everything instead, and a listing read whole reconciles
  deletions.  The ``nextToken`` dies 30 s after it is issued: a listing that waited
  too long gets "Next token is invalid or expired" and restarts that marketplace from
  the start; records already emitted in this run with the same content are not
  emitted again.  Records get ``marketplaceId`` and ``id = "{marketplaceId}:{sellerSku}"``
  (the API has no id).
* **financial_events** (finances.py): 180-day windows ending 3 minutes before now;
  an incremental sync starts ``finances_lookback_hours`` (48) before the watermark.
  Each event becomes one record, ``id = "{eventType}:{blake2b-80 of the event's
  canonical JSON}"`` (``:{n}`` for the n-th identical event of one window).
* **reimbursements** (reports.py): the ``GET_FBA_REIMBURSEMENTS_DATA`` report rows
  (``source = "report"``, at most every ``report_interval``) and the
  ``FBAInventoryReimbursement`` adjustment items among the financial events
  (``source = "financial_events"``), per option ``reimbursement_sources``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import timedelta
from typing import Any

from freshd.connectors.amazon_sp.api import (
    USAGE_PLANS,
    Once,
    Options,
    SPOptions,
    StaleNextToken,
    classify,
    payload,
    restarting,
    utcnow,
)
from freshd.connectors.amazon_sp.auth import access_token_header, classify_lwa, refresh
from freshd.connectors.amazon_sp.finances import FINANCES_PATH, event_record, finance_pass
from freshd.connectors.amazon_sp.reports import REPORTS_PATH, Reimbursements
from freshd.connectors.base import ConnectionSettings, Connector, Page, SyncContext, SyncMode
from freshd.connectors.cursors import due, iso, moment
from freshd.connectors.http import classify_http
from freshd.connectors.listing import Fetch, Fetched, run_listing
from freshd.connectors.pagination import LoopGuard
from freshd.connectors.paginators import Ask, CursorPaging
from freshd.connectors.streams import Incremental, Listing, StreamSpec, columns
from freshd.errors import PermanentError
from freshd.policies.gate import ConnectionPolicies
from freshd.policies.tokens import Token

__all__ = ["USAGE_PLANS", "AmazonSPConnector", "Options", "StaleNextToken", "classify", "classify_lwa",
           "upgrade_checkpoint"]

INVENTORY_PATH = "/fba/inventory/v1/summaries"
INVENTORY_HORIZON = timedelta(days=540)  # startDateTime may not be older than 18 months
INVENTORY_OVERLAP = timedelta(minutes=5)
INVENTORY_OP = "getInventorySummaries"

# --- streams -----------------------------------------------------------------------------------

# per marketplace (its params are added per listing); the cursor is the listing's start, not the
# records' lastUpdatedTime (a change time the filter reads but the records do not reliably carry)
INVENTORY = StreamSpec("inventory_summaries", INVENTORY_PATH, cursor_field="lastUpdatedTime",
                       cursor_param="startDateTime", listing=Listing(
    CursorPaging("nextToken", next_path="pagination.nextToken"), records_path="payload.inventorySummaries",
    incremental=Incremental("lastUpdatedTime", "startDateTime", "iso8601", INVENTORY_OVERLAP.total_seconds(),
                            at_start=True)), columns=columns(
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


def inventory_params(marketplace: str, *, details: bool = True) -> dict[str, str]:
    return {"granularityType": "Marketplace", "granularityId": marketplace, "marketplaceIds": marketplace,
            "details": "true" if details else "false"}


def inventory_records(
    marketplace: str, page: dict[str, Any]
) -> tuple[list[dict[str, Any]], list[tuple[str | None, str]]]:
    records: list[dict[str, Any]] = []
    failures: list[tuple[str | None, str]] = []
    for summary in page.get("inventorySummaries") or []:
        sku = summary.get("sellerSku") if isinstance(summary, dict) else None
        if not isinstance(sku, str) or not sku:
            failures.append((None, f"inventory summary without sellerSku in {marketplace}"))
            continue
        records.append({**summary, "marketplaceId": marketplace, "id": inventory_id(marketplace, sku)})
    return records, failures


def upgrade_checkpoint(state: dict[str, Any] | None) -> dict[str, Any]:
    """An inventory checkpoint written before the listing engine, in today's shape.

    Before: ``{"phase": "done", "since": {marketplace: iso}, "full_at"}``, and while a run was
    under way ``{"phase": "listing", "mode", "full", "started", "done": [...], ...}``.  The old
    ``since`` was already the listing's start minus the overlap, which the engine now subtracts
    when it sends the cursor: it comes back.  A run under way resumes as it did: the marketplaces
    it finished are skipped, the one it was in is listed again from its start.
    """
    if not state or "phase" not in state:
        return state or {}
    since = state.get("since")
    since = since if isinstance(since, dict) else {}
    starts = {m: moment(value) for m, value in since.items() if isinstance(value, str)}
    markets = {m: {"cursor": iso(start + INVENTORY_OVERLAP)} for m, start in starts.items() if start is not None}
    upgraded: dict[str, Any] = {"marketplaces": markets, "full_at": state.get("full_at")}
    if state.get("phase") == "listing":
        upgraded["run"] = {"mode": state.get("mode"), "full": bool(state.get("full")),
                           "started": state.get("started"), "done": list(state.get("done") or [])}
    return upgraded


class _InventoryRun:
    """One inventory sync: the context each marketplace's listing writes to.  Its pages carry the
    stream's checkpoint ``{"marketplaces": {id: <the engine's checkpoint>}, "full_at", "run"?}``
    (``run`` while under way: ``{"mode", "full", "started", "done": [marketplaces]}``)."""

    def __init__(self, ctx: SyncContext, state: dict[str, Any], mode: SyncMode, marketplaces: Sequence[str],
                 full_interval: float) -> None:
        self.ctx, self.mode = ctx, mode
        self.markets: dict[str, dict[str, Any]] = dict(state.get("marketplaces") or {})
        self.full_at = state.get("full_at")
        run = state.get("run")
        self.resumed = isinstance(run, dict) and run.get("mode") == mode.value
        if isinstance(run, dict) and self.resumed:
            self.full, self.started, self.done = bool(run["full"]), str(run["started"]), list(run["done"])
        else:
            self.full = mode is SyncMode.FULL or due(self.full_at, full_interval)
            self.started, self.done = iso(utcnow()), []
            # a new run: no marketplace resumes a listing the last one left
            self.markets = {m: {k: v for k, v in s.items() if k != "listing"} for m, s in self.markets.items()}
        self.pending = [m for m in marketplaces if m not in self.done]
        self.once = Once()
        self.whole = True  # every marketplace read whole and unshifted (the engine's rule, per listing)
        self.records = 0
        self.current, self.current_records = "", 0

    def listing_full(self, marketplace: str) -> bool:
        """This marketplace is listed whole: a full run, a first listing, or a cursor past the API's horizon."""
        cursor = moment(self.markets.get(marketplace, {}).get("cursor"))
        return self.full or cursor is None or cursor - INVENTORY_OVERLAP < utcnow() - INVENTORY_HORIZON

    def begin(self, marketplace: str) -> dict[str, Any]:
        """The engine's checkpoint for `marketplace` as its listing starts; a restart (its token
        went stale) starts the listing over, not at the dead token."""
        restart = self.current == marketplace
        self.current, self.current_records = marketplace, 0
        state = self.markets.get(marketplace, {})
        return {k: v for k, v in state.items() if k != "listing"} if restart else state

    async def emit(self, page: Page) -> None:
        marketplace, state = self.current, page.checkpoint or {}
        self.markets[marketplace] = state
        self.records += len(page.records)
        self.current_records += len(page.records)
        final = False
        if "listing" not in state:  # this marketplace's listing is done
            self.done.append(marketplace)
            # a listing without records cannot have shifted; the records rule applies to the whole
            self.whole = self.whole and (page.listing_complete or self.current_records == 0)
            final = marketplace == self.pending[-1]
        whole_run = final and self.full and not self.resumed and self.whole  # its start is the new full_at
        checkpoint: dict[str, Any] = {"marketplaces": dict(self.markets),
                                      "full_at": self.started if whole_run else self.full_at}
        if not final:
            checkpoint["run"] = {"mode": self.mode.value, "full": self.full, "started": self.started,
                                 "done": list(self.done)}
        await self.ctx.emit(replace(page, records=self.once.fresh(page.records), checkpoint=checkpoint,
                                    listing_complete=whole_run and self.records > 0))

    async def known_versions(self, entity: str, field: str) -> dict[str, str]:
        return await self.ctx.known_versions(entity, field)

    def set_total(self, entity: str, total: int | None, *, estimated: bool = False) -> None:
        if len(self.pending) == 1 and not self.resumed:  # one listing: its count is the stream's
            self.ctx.set_total(entity, total, estimated=estimated)


# --- sync --------------------------------------------------------------------------------------


class AmazonSPConnector(Connector):
    provider = "amazon_sp"
    options_type = SPOptions  # read as Options: the host they resolve to added (read_options)
    options: Options
    required_credentials = ("refresh_token", "client_id", "client_secret")  # Login with Amazon
    streams = (INVENTORY, FINANCIAL_EVENTS, REIMBURSEMENTS)
    rate_limits = USAGE_PLANS

    @classmethod
    def since_problem(cls, stream: StreamSpec) -> str | None:
        return (f"amazon_sp cannot re-read {stream.name} from a date: its windows are kept per marketplace "
                f"and bounded by the API's horizon (a full sync, --full, re-reads what the API still offers)")

    def __init__(self, settings: ConnectionSettings, *, policies: ConnectionPolicies | None = None) -> None:
        super().__init__(settings, policies=policies)
        self.concurrency = int(settings.options.get("page_concurrency", 2))
        agent = {"User-Agent": "freshd/0.1 (Language=Python)"}
        self.client = self.http_client(self.options.base_url, classify=classify, headers=agent,
                                       token_header=access_token_header)
        self.lwa = self.http_client("", classify=classify_lwa, headers=agent)
        # presigned report document URLs: no access token, S3's own errors
        # report documents are files, not pages: allowed 8 times a page's size limit
        self.downloads = self.http_client("", classify=classify_http, headers=agent, timeout=120.0,
                                          max_response_bytes=8 * self.policies.limits.max_response_bytes)
        self.reimbursements = Reimbursements(self.client, self.downloads, self.options)

    @classmethod
    def read_options(cls, settings: ConnectionSettings) -> Options:
        return Options.parse(settings)

    async def aclose(self) -> None:
        await self.client.aclose()
        await self.lwa.aclose()
        await self.downloads.aclose()

    async def refresh_token(self, current: Token | None) -> Token:
        return await refresh(self.lwa, self.options.token_url, self.settings.credentials, current)

    async def probe(self) -> None:
        await self.client.get_json(INVENTORY_PATH, params=inventory_params(self.options.marketplaces[0],
                                                                           details=False), limit=INVENTORY_OP)

    async def sync_entity(
        self, stream: StreamSpec, state: dict[str, Any] | None, mode: SyncMode, ctx: SyncContext
    ) -> None:
        if stream.name == INVENTORY.name:
            await self._sync_inventory(state, mode, ctx)
        elif stream.name == FINANCIAL_EVENTS.name:
            await finance_pass(self.client, self.options, state, mode, ctx, entity=FINANCIAL_EVENTS.name,
                               records=lambda event: [event_record(event)], wrap=lambda sub: sub)
        elif stream.name == REIMBURSEMENTS.name:
            await self.reimbursements.sync(state, mode, ctx)
        else:
            raise PermanentError(f"amazon_sp has no stream {stream.name!r}")

    # --- inventory ---------------------------------------------------------------------------------

    async def _sync_inventory(self, state: dict[str, Any] | None, mode: SyncMode, ctx: SyncContext) -> None:
        run = _InventoryRun(ctx, upgrade_checkpoint(state), mode, self.options.marketplaces,
                            self.options.inventory_full_interval)
        if not run.pending:
            await ctx.emit(Page(INVENTORY.name, [], {"marketplaces": run.markets, "full_at": run.full_at}))
            return
        for marketplace in run.pending:
            stream = replace(INVENTORY, params=inventory_params(marketplace))
            full = run.listing_full(marketplace)

            async def listing(stream: StreamSpec = stream, marketplace: str = marketplace, full: bool = full) -> None:
                await run_listing(stream, run.begin(marketplace), mode, run, self.client,
                                  fetch=self._inventory_page(marketplace), full=full)

            await restarting(listing, f"SP-API {INVENTORY_OP} {marketplace}: nextToken expired {{n}} times in a "
                             f"row (the listing is read too slowly)", what="inventory", marketplace=marketplace)

    def _inventory_page(self, marketplace: str) -> Fetch:
        """The engine's `fetch` for one marketplace: the `payload` envelope, ids made from SKUs."""
        guard = LoopGuard(f"SP-API {INVENTORY_OP} {marketplace}")  # the same page under a new token is a loop

        async def fetch(ask: Ask, params: dict[str, str]) -> Fetched:
            body, response = await self.client.get_json(INVENTORY_PATH, params={**params, **ask.params},
                                                         limit=INVENTORY_OP)
            records, failures = inventory_records(marketplace, payload(body, INVENTORY_OP))
            guard.page([r["sellerSku"] for r in records])
            return Fetched(body, response, records, failures=failures)

        return fetch

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
                fetched = await self._inventory_page(marketplace)(Ask(None, {"sellerSkus": ",".join(chunk)}),
                                                                  inventory_params(marketplace))
                found = {r["sellerSku"] for r in fetched.items}
                await ctx.emit(Page(INVENTORY.name, fetched.items, None, failures=fetched.failures,
                                    deleted=[inventory_id(marketplace, s) for s in chunk if s not in found]))
