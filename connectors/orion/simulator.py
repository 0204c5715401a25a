"""A local Orion Advisor API (Orion Connect) for tests and the demo: clients, accounts, AUM over time.

What it speaks (API_FACTS §1), under ``/api/v1`` (routes are case-insensitive):

* ``GET /Security/Token`` with ``Authorization: Basic base64(user:password)``
  -> ``{"access_token", "expires_in": 36000.0}``; with the partner headers
  ``client_id`` / ``client_secret`` also a ``refresh_token``.  The same call with
  ``Authorization: Bearer <refresh_token>`` (and the partner headers) refreshes:
  each refresh token works **once** and the answer carries the next one.  POST
  with Basic is accepted too (a variant some clients use).
* Data calls: ``Authorization: Session <access_token>``; a missing, unknown or
  expired token is HTTP 401.
* ``GET /Portfolio/Clients``, ``/Portfolio/Clients/{id}``, ``/Portfolio/Accounts``
  (``editedStartDate`` / ``editedEndDate``, ``isActive``), ``/Portfolio/Accounts/{id}``:
  bare JSON arrays (or objects), ``$top``/``$skip`` or ``top``/``skip``, ordered by id;
  no total, no next link: a short page is the end.
* ``GET /Portfolio/Clients/{id}/AumOverTime?startDate&endDate&interval`` ->
  ``[{id, grouping, asOfDate, value}]``; interval ``D``, ``W``, ``M`` or ``A``
  (automatic: daily up to a year, monthly beyond).
* Errors: ASP.NET Web API style ``{"Message": "..."}`` (Orion declares no error
  schema) with an ``X-OAS-CorrelationId`` header.

Known deviations: no OAuth code flow, no impersonation, no ``$filter``/``$select``;
datetimes are naive UTC ``YYYY-MM-DDTHH:MM:SS``.
"""

from __future__ import annotations

import base64
import secrets
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any

from freshd.connectors.simcollection import Entity, RecordSimulator
from freshd.connectors.simulator import ApiError, Handler, Request, Response, SimulatorApp

TOKEN_LIFETIME = 36000.0
CUSTODIANS = ("Schwab", "Fidelity", "Pershing", "TD Ameritrade")
STYLES = ("Growth", "Income", "Balanced", "Tactical")
ACCOUNT_TYPES = ("Individual", "Joint", "IRA", "Roth IRA", "Trust")


def _fmt(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S")


def error_body(status: int, code: str, message: str) -> Response:
    return Response.json({"Message": message}, status, headers=[("X-OAS-CorrelationId", secrets.token_hex(8))])


class OrionSimulator(RecordSimulator):
    def __init__(
        self,
        records: int = 100,
        seed: int = 1,
        credentials: dict[str, str] | None = None,
        *,
        history_days: int = 30,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        creds = credentials or {}
        self.username = creds.get("username", "advisor@demo")
        self.password = creds.get("password", "orion-demo-password")
        self.client_id = creds.get("client_id", "1234")
        self.client_secret = creds.get("client_secret", "d3m0-5ecret")
        self.history_days = history_days
        super().__init__(seed, clock)
        self.grants: Counter[str] = Counter()  # tokens issued by grant: "password", "refresh_token"
        # a test hook: called with (path, skip) before a listing page is served (to change data mid-listing)
        self.on_page: Callable[[str, int], None] | None = None
        self.sessions: dict[str, float] = {}  # access token -> expiry (time.time())
        self.refresh_tokens: set[str] = set()  # the ones still unused
        self.clients: dict[int, dict[str, Any]] = {}
        self.accounts: dict[int, dict[str, Any]] = {}
        self._next_client = 1
        self._next_account = 1
        for _ in range(records):
            self.create_client()
        rng = self.fake.rng
        self.entities = {
            "clients": Entity(lambda: sorted(self.clients), self.create_client, self.update_client,
                              self.delete_client, touch="name", corrupt="name",
                              change=lambda _: {"representativeId": rng.randint(1, 9)}),
            "accounts": Entity(lambda: sorted(self.accounts),
                               lambda: self.create_account(rng.choice(sorted(self.clients))),
                               self.update_account, self.accounts.pop, touch="name", corrupt="name",
                               change=lambda aid: {"currentValue": round(self.accounts[aid]["currentValue"]
                                                                         * rng.uniform(0.98, 1.02), 2)})}
        self.app = SimulatorApp(error_body, expire_tokens=self.expire_tokens, revoke_tokens=self.revoke_tokens)
        for method in ("GET", "POST"):
            self.app.route(method, "/api/v1/Security/Token", self._token)
        for path, handler in (("/api/v1/Portfolio/Clients", self._clients),
                              ("/api/v1/Portfolio/Clients/{id}", self._one(self.clients, "Client")),
                              ("/api/v1/Portfolio/Clients/{id}/AumOverTime", self._aum),
                              ("/api/v1/Portfolio/Accounts", self._accounts),
                              ("/api/v1/Portfolio/Accounts/{id}", self._one(self.accounts, "Account"))):
            self.app.route("GET", path, handler, guard=self._check)

    # --- data ------------------------------------------------------------------------------------

    def create_client(self) -> dict[str, Any]:
        rng = self.fake.rng
        first, last = self.fake.person()
        now = _fmt(self.clock())
        cid = self._next_client
        self._next_client += 1
        client = {
            "id": cid, "name": f"{last}, {first} Household", "firstName": first, "lastName": last,
            "email": f"{first}.{last}{cid}@example.com".lower(), "isActive": True, "aum": 0.0,
            "representativeId": rng.randint(1, 9), "representativeName": "R. Advisor", "representativeNumber": "R01",
            "categoryId": 1, "category": "Client", "createdDate": now, "createdBy": "import", "editedDate": now,
            "editedBy": "import", "startDate": (self.clock() - timedelta(days=self.history_days)).strftime(
                "%Y-%m-%dT00:00:00"), "importKey": f"HH{cid:06d}", "ssN_TaxID": "***-**-****",
        }
        self.clients[cid] = client
        for _ in range(2):
            self.create_account(cid)
        return client

    def create_account(self, cid: int) -> dict[str, Any]:
        rng = self.fake.rng
        now = _fmt(self.clock())
        aid = self._next_account
        self._next_account += 1
        value = round(rng.uniform(10_000, 2_000_000), 2)
        self.accounts[aid] = {
            "id": aid, "name": f"{self.clients[cid]['lastName']} {rng.choice(ACCOUNT_TYPES)}", "isActive": True,
            "number": f"{rng.randint(10_000_000, 99_999_999)}", "custodian": rng.choice(CUSTODIANS),
            "custodianId": rng.randint(1, 40), "accountType": rng.choice(ACCOUNT_TYPES),
            "managementStyle": rng.choice(STYLES), "managementStyleId": rng.randint(1, 4), "modelName": None,
            "isManaged": True, "clientId": cid, "registrationId": cid * 10, "currentValue": value,
            "accountStartValue": round(value * 0.8, 2), "accountStartDate": self.clients[cid]["startDate"],
            "createdDate": now, "editedDate": now, "editedBy": "import", "accountStatusId": 1,
            "accountStatusDescription": "Open", "outsideId": None, "importKey": f"AC{aid:07d}",
        }
        self.clients[cid]["aum"] = round(sum(a["currentValue"] for a in self.accounts.values()
                                             if a["clientId"] == cid), 2)
        return self.accounts[aid]

    def update_client(self, cid: int, **fields: Any) -> dict[str, Any]:
        self.clients[cid] = {**self.clients[cid], **fields, "editedDate": _fmt(self.clock()), "editedBy": "advisor"}
        return self.clients[cid]

    def update_account(self, aid: int, **fields: Any) -> dict[str, Any]:
        self.accounts[aid] = {**self.accounts[aid], **fields, "editedDate": _fmt(self.clock()), "editedBy": "advisor"}
        return self.accounts[aid]

    def delete_client(self, cid: int) -> None:
        del self.clients[cid]
        for aid in [a for a, acc in self.accounts.items() if acc["clientId"] == cid]:
            del self.accounts[aid]

    def aum_points(self, cid: int, start: date, end: date, interval: str = "D") -> list[dict[str, Any]]:
        client = self.clients[cid]
        first = max(start, datetime.fromisoformat(client["startDate"]).date())
        last = min(end, self.clock().date())
        if interval == "A":
            interval = "D" if (last - first).days <= 366 else "M"
        points = []
        day = first
        while day <= last:
            keep = (interval == "D" or (interval == "W" and day.weekday() == 4)
                    or (interval == "M" and (day + timedelta(days=1)).day == 1) or day == last)
            if keep:
                # deterministic: the same day always has the same value (a re-pull is a no-op)
                wobble = ((cid * 7919 + day.toordinal() * 104729) % 2001 - 1000) / 100_000
                value = round(client["aum"] * (1 + wobble), 2)
                points.append({"id": cid, "grouping": 0, "asOfDate": day.strftime("%Y-%m-%dT00:00:00"),
                               "value": value})
            day += timedelta(days=1)
        return points

    # --- the test contract (RecordSimulator): clients and accounts; AUM points are counted ---------

    churned = ("clients", "accounts", "accounts")

    def count(self, entity: str) -> int:
        if entity in self.entities:
            return super().count(entity)
        today = self.clock().date()
        return sum(len(self.aum_points(c, date(1900, 1, 1), today)) for c in self.clients)

    def expire_tokens(self) -> None:
        self.sessions = dict.fromkeys(self.sessions, 0.0)

    def revoke_tokens(self) -> None:
        """The user's access was withdrawn: sessions and refresh tokens die, the password changes."""
        self.expire_tokens()
        self.refresh_tokens.clear()
        self.password = secrets.token_hex(12)

    # --- HTTP ------------------------------------------------------------------------------------

    def _issue(self, partner: bool, grant: str) -> Response:
        token = secrets.token_urlsafe(32)
        self.sessions[token] = time.time() + TOKEN_LIFETIME
        self.token_requests += 1
        self.grants[grant] += 1
        body: dict[str, Any] = {"access_token": token, "expires_in": TOKEN_LIFETIME}
        if partner:
            refresh = secrets.token_urlsafe(24)
            self.refresh_tokens.add(refresh)
            body["refresh_token"] = refresh
        return Response.json(body)

    async def _token(self, request: Request) -> Response:
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        partner = request.headers.get("client_id") == self.client_id and \
            request.headers.get("client_secret") == self.client_secret
        if (request.headers.get("client_id") or request.headers.get("client_secret")) and not partner:
            return error_body(401, "", "Invalid client_id or client_secret.")
        if scheme.lower() == "basic":
            try:
                user, _, password = base64.b64decode(value).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                return error_body(400, "", "Malformed Basic authorization.")
            if (user, password) != (self.username, self.password):
                return error_body(401, "", "Authorization has been denied for this request.")
            return self._issue(partner, "password")
        if scheme.lower() == "bearer" and request.method == "GET":
            if not partner:
                return error_body(401, "", "A refresh token needs the partner client_id and client_secret.")
            if value not in self.refresh_tokens:
                return error_body(401, "", "Invalid or already used refresh token.")
            self.refresh_tokens.discard(value)  # single use
            return self._issue(partner, "refresh_token")
        return error_body(401, "", "Authorization has been denied for this request.")

    def _check(self, request: Request) -> None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "session" or self.sessions.get(token, 0.0) < time.time():
            raise ApiError(error_body(401, "", "Authorization has been denied for this request."))

    def _page(self, request: Request, select: Callable[[], list[dict[str, Any]]]) -> Response:
        """One $top/$skip (or top/skip) slice of what `select` lists, in id order."""
        try:
            top = int(request.arg("$top") or request.arg("top") or 5000)
            skip = int(request.arg("$skip") or request.arg("skip") or 0)
        except ValueError:
            return error_body(400, "", "The request is invalid: $top and $skip must be integers.")
        if self.app.faults.loop:
            skip = 0  # the fault: whatever was asked, the first page again
        if self.on_page is not None:
            self.on_page(request.path, skip)
        return Response.json(select()[skip:skip + top])

    async def _clients(self, request: Request) -> Response:
        active = request.arg("isActive")
        return self._page(request, lambda: [c for _, c in sorted(self.clients.items())
                                            if active is None or c["isActive"] == (active.lower() == "true")])

    @staticmethod
    def _one(records: dict[int, dict[str, Any]], noun: str) -> Handler:
        """GET one client or account by id."""
        async def read(request: Request) -> Response:
            record = records.get(int(request.params["id"])) if request.params["id"].isdigit() else None
            return error_body(404, "", f"{noun} not found.") if record is None else Response.json(record)
        return read

    async def _accounts(self, request: Request) -> Response:
        try:
            start = request.arg("editedStartDate")
            end = request.arg("editedEndDate")
            start_at = datetime.fromisoformat(start).strftime("%Y-%m-%dT%H:%M:%S") if start else None
            end_at = datetime.fromisoformat(end).strftime("%Y-%m-%dT%H:%M:%S") if end else None
        except ValueError:
            return error_body(400, "", "The request is invalid: editedStartDate must be a date-time.")
        return self._page(request, lambda: [
            a for _, a in sorted(self.accounts.items())
            if (start_at is None or a["editedDate"] >= start_at) and (end_at is None or a["editedDate"] <= end_at)])

    async def _aum(self, request: Request) -> Response:
        cid = int(request.params["id"]) if request.params["id"].isdigit() else 0
        if cid not in self.clients:
            return error_body(404, "", "Client not found.")
        try:
            start = datetime.fromisoformat(request.arg("startDate") or "1900-01-01").date()
            end = datetime.fromisoformat(request.arg("endDate") or self.clock().date().isoformat()).date()
        except ValueError:
            return error_body(400, "", "The request is invalid: startDate and endDate must be dates.")
        interval = (request.arg("interval") or "A").upper()
        if interval not in ("A", "D", "W", "M"):
            return error_body(400, "", f"The request is invalid: unknown interval {interval!r}.")
        return Response.json(self.aum_points(cid, start, end, interval))
