"""A local Powens API v2.0 for tests and the demo: one user, their bank connections, accounts, transactions.

What it speaks (API_FACTS §5), under ``/2.0``:

* ``Authorization: Bearer <permanent user token>`` on every call; a missing or
  unknown token is HTTP 401 ``{"code": "invalidToken", ...}``.  ``{userId}`` is
  ``me`` or the user's numeric id.
* ``GET /users/{userId}/connections`` -> ``{"connections": [...]}`` with ``state``
  (null when the last sync succeeded), ``error``, ``error_message``, ``last_update``.
* ``GET /users/{userId}/accounts[?all]`` -> ``{"accounts": [...], "balances": {"EUR": …}}``;
  deleted and disabled accounts only with ``all``; every account has the spec's required fields
  (``id_source``, ``id_type`` among them).
* ``GET /users/{userId}/transactions?limit=N[&offset][&last_update][&all]`` ->
  ``{"transactions": [...], "first_date", "last_date", "result_min_date",
  "result_max_date", "total"}``.  ``limit`` is required and at most 1000 (400
  ``missingParameter`` / ``invalidValue``); ``last_update`` returns rows updated
  after that time; ``all`` adds deleted ones (``deleted`` set).  Newest first
  (``date`` desc, ``id`` desc).  ``GET /users/{userId}/transactions/{id}``.
* Errors: ``{"code", "description", "message"?, "request_id"}``.

Known deviations: one user; no webview, no connection creation or forced sync;
``_links.next`` is not sent (the official spec does not declare it).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from freshd.connectors.simcollection import Entity, RecordSimulator
from freshd.connectors.simulator import ApiError, Request, Response, SimulatorApp

USER_ID = 42
MAX_LIMIT = 1000
BANKS = ("Crédit Mutuel", "BNP Paribas", "Société Générale", "La Banque Postale", "Boursorama")
TYPES = ("card", "transfer", "order", "withdrawal", "deposit", "bank")
ACCOUNT_TYPE_IDS = {"checking": 2, "savings": 3}  # `id_type`: the simulator's own ids (UNCONFIRMED)
WORDINGS = ("CB CARREFOUR", "PRLV SEPA EDF", "VIR SALAIRE", "CB SNCF", "RETRAIT DAB", "CB AMAZON", "PRLV FREE")


def _fmt(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def error_body(status: int, code: str, message: str) -> Response:
    return Response.json({"code": code, "description": message, "request_id": secrets.token_hex(8)}, status)


class PowensSimulator(RecordSimulator):
    def __init__(
        self,
        records: int = 100,
        seed: int = 1,
        credentials: dict[str, str] | None = None,
        *,
        connections: int = 3,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.access_token = (credentials or {}).get("access_token", "powens-demo-token")
        super().__init__(seed, clock)
        self.revoked = False
        self.connections: dict[int, dict[str, Any]] = {}
        self.accounts: dict[int, dict[str, Any]] = {}
        self.transactions: dict[int, dict[str, Any]] = {}
        self._next_tx = 1
        now = self.clock()
        for cid in range(1, connections + 1):
            self.connections[cid] = {
                "id": cid, "id_user": USER_ID, "id_connector": 40 + cid, "connector_uuid": secrets.token_hex(16),
                "state": None, "error": None, "error_message": None, "last_update": _fmt(now),
                "created": _fmt(now - timedelta(days=400)), "active": True, "next_try": None, "expire": None,
            }
            for n in range(2):
                aid = cid * 10 + n
                kind = ("checking", "savings")[n]
                self.accounts[aid] = {
                    # one source per connection, numbered as its connection (UNCONFIRMED)
                    "id": aid, "id_connection": cid, "id_user": USER_ID, "id_source": cid, "id_parent": None,
                    "name": ("Compte courant", "Livret A")[n],
                    "original_name": ("COMPTE CHEQUE", "LIVRET A")[n], "number": f"{cid:04d}{aid:07d}",
                    "iban": f"FR76{cid:05d}{aid:018d}", "balance": round(self.fake.rng.uniform(10, 9000), 2),
                    "coming": 0.0, "currency": {"id": "EUR", "name": "Euro", "symbol": "€", "precision": 2},
                    "type": kind, "id_type": ACCOUNT_TYPE_IDS[kind], "usage": "PRIV", "display": True,
                    "bookmarked": False,
                    "last_update": _fmt(now), "deleted": None, "disabled": None,
                }
        for _ in range(records):
            self.create_transaction(now - timedelta(days=self.fake.rng.randint(0, 365)))
        # a deleted transaction stays, `deleted` set: live ones only are counted and changed
        self.entities = {"transactions": Entity(
            self._live_transactions, self.create_transaction, self.update_transaction, self.delete_transaction,
            touch="comment", corrupt="wording", change=lambda _: {"coming": self.fake.rng.random() < 0.2})}
        self.app = SimulatorApp(error_body, revoke_tokens=self.revoke_tokens)
        for path, handler in (("/2.0/users/{user}/connections", self._connections),
                              ("/2.0/users/{user}/accounts", self._accounts),
                              ("/2.0/users/{user}/transactions", self._transactions),
                              ("/2.0/users/{user}/transactions/{id}", self._transaction)):
            self.app.route("GET", path, handler, guard=self._check)

    # --- data ------------------------------------------------------------------------------------

    def create_transaction(self, day: datetime | None = None) -> dict[str, Any]:
        rng = self.fake.rng
        now = self.clock()
        day = day or now
        account = rng.choice(sorted(a for a, acc in self.accounts.items() if acc["deleted"] is None))
        value = round(rng.uniform(-300, 120), 2)
        tid = self._next_tx
        self._next_tx += 1
        record = {
            "id": tid, "id_account": account, "type": rng.choice(TYPES), "date": day.strftime("%Y-%m-%d"),
            "application_date": day.strftime("%Y-%m-%d"), "rdate": day.strftime("%Y-%m-%d"),
            "vdate": day.strftime("%Y-%m-%d"), "datetime": None, "date_scraped": _fmt(now),
            "value": value, "gross_value": value, "original_value": None, "original_currency": None,
            "commission": None, "wording": rng.choice(WORDINGS), "original_wording": None, "coming": False,
            "active": True, "comment": None, "counterparty": None, "card": None, "country": "FR",
            "last_update": _fmt(now), "deleted": None,
        }
        self.transactions[tid] = record
        return record

    def update_transaction(self, tid: int, **fields: Any) -> dict[str, Any]:
        record = {**self.transactions[tid], **fields, "last_update": _fmt(self.clock())}
        self.transactions[tid] = record
        return record

    def delete_transaction(self, tid: int) -> None:
        """The bank no longer shows it: Powens keeps the row with `deleted` set."""
        now = _fmt(self.clock())
        self.update_transaction(tid, deleted=now)

    def set_connection_state(self, cid: int, state: str | None, message: str | None = None) -> None:
        self.connections[cid].update(state=state, error=state, error_message=message)

    def _live_transactions(self) -> list[int]:
        return sorted(t for t, r in self.transactions.items() if r["deleted"] is None)

    # --- the test contract (RecordSimulator): transactions; accounts and connections are counted ----

    def count(self, entity: str) -> int:
        if entity == "accounts":
            return sum(1 for a in self.accounts.values() if a["deleted"] is None)
        return len(self.connections) if entity == "connections" else super().count(entity)

    def revoke_tokens(self) -> None:
        """The user's token was deleted (DELETE /auth/token or /auth/renew with revoke_previous)."""
        self.revoked = True

    # --- HTTP ------------------------------------------------------------------------------------

    def _check(self, request: Request) -> None:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if self.revoked or scheme.lower() != "bearer" or token != self.access_token:
            raise ApiError(error_body(401, "invalidToken", "The token is invalid or expired."))
        user = request.params.get("user", "")
        if user not in ("me", str(USER_ID)):
            raise ApiError(error_body(404, "userNotFound", f"User {user} not found."))

    async def _connections(self, request: Request) -> Response:
        return Response.json({"connections": [self.connections[c] for c in sorted(self.connections)]})

    async def _accounts(self, request: Request) -> Response:
        show_all = request.arg("all") is not None
        rows = [a for _, a in sorted(self.accounts.items())
                if show_all or (a["deleted"] is None and a["disabled"] is None)]
        if not rows:
            return error_body(400, "noAccount", "No account found.")
        return Response.json({"accounts": rows, "balances": self._balances(rows)})

    @staticmethod
    def _balances(rows: list[dict[str, Any]]) -> dict[str, float | None]:
        """`BankAccountsList.balances` (required): currency -> the total balance of the listed accounts
        that count in aggregated metrics (displayed, neither deleted nor disabled; UNCONFIRMED which)."""
        totals: dict[str, float | None] = {}
        for account in rows:
            if not account["display"] or account["deleted"] or account["disabled"] or not account["currency"]:
                continue
            code, balance = account["currency"]["id"], account["balance"]
            totals.setdefault(code, 0.0)
            if balance is not None:
                totals[code] = round((totals[code] or 0.0) + balance, account["currency"]["precision"])
        return totals

    async def _transactions(self, request: Request) -> Response:
        limit_text = request.arg("limit")
        if limit_text is None:
            return error_body(400, "missingParameter", "Missing parameter 'limit'.")
        try:
            limit, offset = int(limit_text), int(request.arg("offset", "0") or 0)
        except ValueError:
            return error_body(400, "invalidValue", "limit and offset must be integers.")
        if not 1 <= limit <= MAX_LIMIT or offset < 0:
            return error_body(400, "invalidValue", f"limit must be between 1 and {MAX_LIMIT}.")
        since = request.arg("last_update")
        if since is not None:
            try:
                datetime.strptime(since, "%Y-%m-%d %H:%M:%S")
            except ValueError:
                return error_body(400, "invalidValue", "last_update must be 'YYYY-MM-DD HH:MM:SS'.")
        show_all = request.arg("all") is not None or request.arg("deleted") == "true"
        rows = [t for t in self.transactions.values()
                if (show_all or t["deleted"] is None) and (since is None or t["last_update"] > since)]
        rows.sort(key=lambda t: (t["date"], t["id"]), reverse=True)
        page = rows[offset:offset + limit]
        if self.app.faults.loop:
            page = rows[:limit]  # the fault: whatever offset was asked, the first page again
        dates = [t["date"] for t in rows]
        return Response.json({
            "transactions": page, "total": len(rows),
            "first_date": min(dates, default=None), "last_date": max(dates, default=None),
            "result_min_date": min((t["date"] for t in page), default=None),
            "result_max_date": max((t["date"] for t in page), default=None),
        })

    async def _transaction(self, request: Request) -> Response:
        record = self.transactions.get(int(request.params["id"])) if request.params["id"].isdigit() else None
        if record is None:
            return error_body(404, "transactionNotFound", "Transaction not found.")
        return Response.json(record)
