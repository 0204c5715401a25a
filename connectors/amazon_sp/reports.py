"""Reimbursements: the ``GET_FBA_REIMBURSEMENTS_DATA`` report and the FBA reimbursement adjustments
among the financial events (docs/connectors/amazon_sp.md "Reimbursements").

Bespoke by design (issue 16): create the report, poll it until DONE, get the document, download
(presigned, gzipped), parse the tab-separated text.  CANCELLED (no data, or asked too soon) leaves
the range for the next report; FATAL fails the entity.  The stream's checkpoint:
``{"events": <finance pass>, "report": {"end", "requested_at", "pending"?: {"id", "start", "end",
"rows"}}}``.
"""

from __future__ import annotations

import csv
import gzip
import zlib
from collections import Counter
from datetime import datetime, timedelta
from typing import Any

import trio

from freshd.connectors.amazon_sp.api import Options, utcnow
from freshd.connectors.amazon_sp.finances import finance_pass, reimbursement_event_records
from freshd.connectors.base import Page, SyncContext, SyncMode
from freshd.connectors.cursors import due, iso
from freshd.connectors.http import ProviderClient
from freshd.errors import PermanentError, ProviderError, TransientError

REPORTS_PATH = "/reports/2021-06-30/reports"
DOCUMENTS_PATH = "/reports/2021-06-30/documents"
REIMBURSEMENT_REPORT = "GET_FBA_REIMBURSEMENTS_DATA"
REPORT_HORIZON = timedelta(days=540)
REPORT_ROWS_PER_PAGE = 1000
STREAM = "reimbursements"


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


def decode_report(data: bytes, charset: str | None) -> str:
    """Report documents are UTF-8, or Cp1252 in some marketplaces (UNCONFIRMED: honour a charset when sent)."""
    for encoding in (charset, "utf-8", "cp1252"):
        if encoding:
            try:
                return data.decode(encoding)
            except (LookupError, UnicodeDecodeError):
                continue
    return data.decode("latin-1")


def report_records(report_id: str, rows: list[dict[str, str]]) -> tuple[list[dict[str, Any]],
                                                                         list[tuple[str | None, str]]]:
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


class Reimbursements:
    """The reimbursements stream: the finance pass's reimbursement items, then the report."""

    def __init__(self, client: ProviderClient, downloads: ProviderClient, options: Options) -> None:
        self.client, self.downloads, self.options = client, downloads, options

    async def sync(self, state: dict[str, Any] | None, mode: SyncMode, ctx: SyncContext) -> None:
        state = state or {}
        status: dict[str, Any] = {"events": state.get("events") or {}, "report": state.get("report") or {}}

        def wrap(sub: dict[str, Any]) -> dict[str, Any]:
            status["events"] = sub
            return {"events": sub, "report": status["report"]}

        if "financial_events" in self.options.reimbursement_sources:
            await finance_pass(self.client, self.options, status["events"], mode, ctx, entity=STREAM,
                               records=reimbursement_event_records, wrap=wrap)
        if "report" in self.options.reimbursement_sources:
            await self._report_pass(status, mode, ctx)

    async def _report_pass(self, status: dict[str, Any], mode: SyncMode, ctx: SyncContext) -> None:
        report: dict[str, Any] = status["report"]
        now = utcnow()

        def checkpoint(report_state: dict[str, Any]) -> dict[str, Any]:
            status["report"] = report_state
            return {"events": status["events"], "report": report_state}

        pending = report.get("pending")
        if not pending:
            if mode is SyncMode.INCREMENTAL and report.get("end") and \
                    not due(report.get("requested_at"), self.options.report_interval):
                return  # FBA reports are regenerated at most every few hours: not due yet
            start = max(self.options.since(report.get("end"), mode), now - REPORT_HORIZON)
            report_id = await self._create_report(start, now)
            pending = {"id": report_id, "start": iso(start), "end": iso(now), "rows": 0}
            # committed at once: an interrupted job polls this report again instead of creating another
            await ctx.emit(Page(STREAM, [], checkpoint({**report, "pending": pending})))
        kept = {k: v for k, v in report.items() if k != "pending"}  # the report state without this report
        try:
            document_id = await self._await_report(str(pending["id"]))
        except PermanentError as exc:
            if exc.status != 404 or not report.get("pending"):
                raise
            # a resumed job's report is gone (reports are kept 90 days at most): ask for a new one
            status["report"] = kept
            await self._report_pass(status, mode, ctx)
            return
        if document_id is None:
            # CANCELLED: no data, or an FBA report asked for too soon after the last one. The range is
            # not marked read (the next report covers it again); the interval still applies.
            await ctx.emit(Page(STREAM, [], checkpoint({**kept, "requested_at": iso(now)})))
            return
        rows, bad = await self._read_document(document_id)
        records, failures = report_records(str(pending["id"]), rows)
        failures += [(None, reason) for reason in bad]
        skip = int(pending.get("rows", 0))
        done = {"end": pending["end"], "requested_at": iso(now)}
        for first in range(skip, max(len(records), skip + 1), REPORT_ROWS_PER_PAGE):
            stop = first + REPORT_ROWS_PER_PAGE
            last = stop >= len(records)
            state = done if last else {**report, "pending": {**pending, "rows": stop}}
            await ctx.emit(Page(STREAM, records[first:stop], checkpoint(state), failures=failures if last else ()))

    async def _create_report(self, start: datetime, end: datetime) -> str:
        body, _ = await self.client.request_json("POST", REPORTS_PATH, json={
            "reportType": REIMBURSEMENT_REPORT, "marketplaceIds": list(self.options.marketplaces),
            "dataStartTime": iso(start), "dataEndTime": iso(end),
        }, limit="createReport")
        report_id = body.get("reportId") if isinstance(body, dict) else None
        if not report_id:
            raise TransientError("SP-API createReport: no reportId in the response")
        return str(report_id)

    async def _await_report(self, report_id: str) -> str | None:
        """Poll until the report is processed: its document id, or None when CANCELLED (no data)."""
        delay = max(self.options.report_poll_interval, 0.01)
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
            return parse_report(decode_report(data, response.charset_encoding))  # Content-Type's charset
        raise AssertionError("unreachable")
