"""Financial events (``GET /finances/v0/financialEvents``), read in windows.

Bespoke by design (issue 16): windows of at most 180 days (longer ranges come back *empty*),
``PostedBefore`` at least 3 minutes before now, each window paged by ``NextToken`` and
restarted whole when it went stale.  Each event of each ``…EventList`` becomes one record with
a synthetic id (docs/connectors/amazon_sp.md).  The pass's checkpoint: ``{"phase": "windows",
"mode", "posted_after"}`` after each window, ``{"phase": "done", "posted_after"}`` at the end.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from freshd.connectors.amazon_sp.api import Once, Options, digest, payload, restarting, utcnow
from freshd.connectors.base import Page, SyncContext, SyncMode
from freshd.connectors.cursors import iso, moment
from freshd.connectors.http import ProviderClient
from freshd.connectors.pagination import LoopGuard
from freshd.connectors.paginators import CursorPager, CursorPaging, PageRead

FINANCES_PATH = "/finances/v0/financialEvents"
MAX_WINDOW = timedelta(days=180)  # financial events: a longer PostedAfter..PostedBefore comes back empty
POSTED_BEFORE_SAFETY = timedelta(minutes=3)  # the 2-minute rule, plus a minute of clock skew
EVENTS_PAGING = CursorPaging("NextToken", next_path="payload.NextToken", size_param="MaxResultsPerPage", size=100)


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
            content = digest(item)
            key = f"{event_type}:{content}"
            occurrences[key] += 1
            n = occurrences[key]
            yield FinancialEvent(key if n == 1 else f"{key}:{n}", event_type, content, item)


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


def windows(start: datetime, end: datetime) -> list[tuple[datetime, datetime]]:
    found = []
    while start < end:
        stop = min(start + MAX_WINDOW, end)
        found.append((start, stop))
        start = stop
    return found


OnPage = Callable[[list[FinancialEvent], bool], Awaitable[None]]  # (one page's events, is it the window's last)


async def read_window(client: ProviderClient, after: datetime, before: datetime, on_page: OnPage) -> None:
    """One PostedAfter..PostedBefore window, all pages; restarted whole if its NextToken went stale."""
    params = {"PostedAfter": iso(after), "PostedBefore": iso(before)}

    async def listing() -> None:
        pager = CursorPager(EVENTS_PAGING, LoopGuard(f"SP-API listFinancialEvents {iso(after)}..{iso(before)}"))
        occurrences: Counter[str] = Counter()  # identical events of one window: :2, :3, ...
        while not pager.done:
            body, response = await client.get_json(FINANCES_PATH, params={**params, **pager.ask().params},
                                                   limit="listFinancialEvents")
            page = payload(body, "listFinancialEvents")
            events = list(flatten_events(page.get("FinancialEvents") or {}, occurrences))
            pager.guard.page([e.digest for e in events])
            pager.advance(PageRead(events, [], body, response.headers, response.url))
            await on_page(events, pager.done)

    await restarting(listing, "SP-API listFinancialEvents: NextToken expired {n} times in a row",
                     what="financial events", window=params)


async def finance_pass(
    client: ProviderClient,
    options: Options,
    sub: dict[str, Any] | None,
    mode: SyncMode,
    ctx: SyncContext,
    *,
    entity: str,
    records: Callable[[FinancialEvent], list[dict[str, Any]]],
    wrap: Callable[[dict[str, Any]], dict[str, Any]],
) -> None:
    """Financial events from the watermark (minus the lookback) to now - 3 min, in <= 180-day windows.

    Each page goes to `entity` as the `records` of its events (those this run already emitted
    unchanged left out); `wrap` turns this pass's state into the stream's checkpoint.
    """
    sub = sub or {}
    end = utcnow() - POSTED_BEFORE_SAFETY
    watermark = sub.get("posted_after")
    resumed = moment(watermark) if sub.get("phase") == "windows" and sub.get("mode") == mode.value else None
    start = resumed or options.since(watermark, mode)  # resumed: its windows before this one are stored
    spans = windows(start, end)
    final = {"phase": "done", "posted_after": iso(end) if spans else watermark or iso(end)}
    if not spans:
        await ctx.emit(Page(entity, [], wrap(final)))
        return
    once = Once()
    for index, (after, before) in enumerate(spans):
        ended = final if index == len(spans) - 1 else {"phase": "windows", "mode": mode.value,
                                                       "posted_after": iso(before)}

        async def on_page(events: list[FinancialEvent], last: bool, ended: dict[str, Any] = ended) -> None:
            fresh = once.fresh([record for event in events for record in records(event)])
            await ctx.emit(Page(entity, fresh, wrap(ended) if last else None))

        await read_window(client, after, before, on_page)
