"""The Reports API 2021-06-30 of the Amazon SP simulator: a report is queued, processed, then DONE
(or CANCELLED without data, FATAL when a test asks), its document a presigned gzip download."""

from __future__ import annotations

import gzip
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson
import trio

from freshd.connectors.amazon_sp.seller import SellerData, error, invalid, parse_time
from freshd.connectors.simcollection import iso
from freshd.connectors.simulator import ApiError, Request, Response

DOCUMENT_URL_TTL = 300.0
REIMBURSEMENT_REPORT = "GET_FBA_REIMBURSEMENTS_DATA"
REPORT_COLUMNS = (
    "approval-date", "reimbursement-id", "case-id", "amazon-order-id", "reason", "sku", "fnsku", "asin",
    "product-name", "condition", "currency-unit", "amount-per-unit", "amount-total",
    "quantity-reimbursed-cash", "quantity-reimbursed-inventory", "quantity-reimbursed-total",
    "original-reimbursement-id", "original-reimbursement-type",
)


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


class Reports(SellerData):
    """createReport, getReport, getReportDocument and the document download (AmazonSPSimulator is one)."""

    report_seconds: float  # how long a report takes to be DONE
    fail_next_report: str | None  # "FATAL" or "CANCELLED": the next report ends so
    _reports: dict[str, _Report]
    _documents: dict[str, tuple[bytes, float]]  # document id -> (gzip body, url expiry)

    def _create_report(self, request: Request) -> Response:
        spec = request.json(invalid("Invalid Input", "The request body is not valid JSON"))
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
