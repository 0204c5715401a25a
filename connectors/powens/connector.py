"""Powens (formerly Budget Insight) API v2.0: a user's bank connections, accounts and transactions.

Sections, in the order every provider module keeps them: auth, error
classification, streams, sync.

* **Auth**: a permanent user token (credential ``access_token``) as
  ``Authorization: Bearer``.  Permanent tokens do not expire, so there is no
  refresh: a 401 means the token was revoked or replaced (``/auth/renew``) and
  the connection goes ``reauth_required`` until a new one is set.
* **Errors**: ``{"code", "description", "message"}`` bodies.  401 and the
  user-action codes -> ReauthRequired; 429 -> RateLimited; 5xx, 409 and the
  transient codes (``websiteUnavailable``, ``bug``, ``tooManySync``,
  ``rateLimiting``) -> TransientError; other 4xx -> PermanentError.  Unknown
  codes fall back on the HTTP status.
* **Bank connection states** (``connections`` stream): a state that needs the
  bank customer (``SCARequired``, ``wrongpass``, ``webauthRequired``,
  ``actionNeeded``, ``passwordExpired``, ``additionalInformationNeeded``,
  ``decoupled``) is recorded on the job as a failure naming the bank connection and
  Powens' message, and the other connections' data still syncs; when *every*
  bank connection needs the customer, nothing new can arrive and the freshd
  connection goes ``reauth_required`` with those messages.  Transient states
  (``rateLimiting``, ``websiteUnavailable``, ``bug``, ``validating``) are
  Powens' to retry: logged, not failures.  Unknown states are recorded, never fatal.
* **Streams**: ``connections`` and ``accounts`` are small and listed whole
  each sync (a complete listing marks vanished ones deleted; ``accounts`` asks
  ``all`` so deleted accounts come back with ``deleted`` set and become
  tombstones).  ``transactions`` is incremental: ``last_update`` (rows updated
  after it) with ``all`` so deleted rows arrive with ``deleted`` set and become
  tombstones; ``limit`` (max 1000) / ``offset`` until a short page.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx
import structlog

from freshd.connectors.base import ConnectionSettings, Connector, Page, SyncContext, SyncMode
from freshd.connectors.errors import ErrorTable, classify_with
from freshd.connectors.listing import fetch_by_id, run_listing, since_checkpoint, tune
from freshd.connectors.paginators import OffsetPaging
from freshd.connectors.schema import rules
from freshd.connectors.streams import Incremental, Listing, SoftDelete, StreamSpec, columns
from freshd.errors import (
    PermanentError,
    ProviderError,
    ReauthRequired,
    TransientError,
)
from freshd.policies.gate import ConnectionPolicies

log = structlog.get_logger(__name__)

PAGE_SIZE = 1000  # the documented maximum
LOOKBACK = 60.0
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"

# bank connection states and error codes (API_FACTS §5.6)
USER_ACTION = frozenset({"SCARequired", "webauthRequired", "additionalInformationNeeded", "decoupled",
                         "actionNeeded", "passwordExpired", "wrongpass"})
TRANSIENT = frozenset({"rateLimiting", "websiteUnavailable", "bug", "validating", "tooManySync"})


@dataclass(frozen=True, slots=True)
class PowensOptions:
    page_size: int = PAGE_SIZE  # transactions per page, up to the documented maximum
    lookback: float = LOOKBACK  # seconds re-read before the cursor (last_update is the server's)

    def __post_init__(self) -> None:
        rules(("page_size", 1 <= self.page_size <= PAGE_SIZE, f"expected 1 to {PAGE_SIZE}, got {self.page_size}"),
              ("lookback", self.lookback >= 0, f"expected seconds (0 or more), got {self.lookback}"))


# --- auth --------------------------------------------------------------------------------------------

REAUTH_HINT = "set a new user token with `freshctl connections set-credential {name} access_token=...`"


# --- error classification --------------------------------------------------------------------------


# `{"code", "description", "message", "request_id"}`; a 401 is a refused user token (there is no refresh)
ERRORS = ErrorTable("Powens", code=("code",), message=("message", "description"),
                    rate_limited=frozenset({"rateLimiting"}), transient=TRANSIENT,
                    transient_statuses=frozenset({408, 409, 425}), reauth=USER_ACTION,
                    reauth_statuses=frozenset({401}), expired_statuses=frozenset())
classify = classify_with(ERRORS)


# --- streams ------------------------------------------------------------------------------------------

CONNECTIONS = StreamSpec("connections", "users/me/connections", columns=columns(
    "id:integer", "connector_id=id_connector:integer", "state", "error", "active:boolean",
    "last_update:timestamptz", "created_at=created:timestamptz"))
ACCOUNTS = StreamSpec("accounts", "users/me/accounts", cursor_field="last_update",
                      columns=columns(
    "id:integer", "connection_id=id_connection:integer", "name", "number", "iban", "type", "balance:numeric",
    "currency=currency.id", "last_update:timestamptz", "disabled:timestamptz"))
# `all`: deleted rows come back with `deleted` set and become tombstones; offset paging over a live
# list, so the next listing starts no later than this one did; `total` is for progress only
TRANSACTIONS = StreamSpec("transactions", "users/me/transactions", cursor_field="last_update",
                          cursor_param="last_update", params={"all": ""}, listing=Listing(
    OffsetPaging(limit=PAGE_SIZE, total_path="total", trust_total=False), records_path="transactions",
    incremental=Incremental("last_update", "last_update", TIME_FORMAT, LOOKBACK, until_start=True),
    soft_delete=SoftDelete("deleted", keep=False)), columns=columns(
    "id:integer", "account_id=id_account:integer", "type", "date:timestamptz", "value_date=vdate:timestamptz",
    "value:numeric", "wording", "coming:boolean", "active:boolean", "last_update:timestamptz"))


# --- sync -----------------------------------------------------------------------------------------------


class PowensConnector(Connector):
    provider = "powens"
    options_type = PowensOptions
    options: PowensOptions
    required_credentials = ("access_token",)  # a permanent Powens user token
    streams = (CONNECTIONS, ACCOUNTS, TRANSACTIONS)
    since_streams = frozenset({TRANSACTIONS.name})  # bank connections and accounts are listed whole

    def since_state(self, stream: StreamSpec, state: dict[str, Any] | None, since: datetime) -> dict[str, Any]:
        """A transactions listing from last_update=`since`, keeping the stored watermark."""
        if stream.name != TRANSACTIONS.name:
            return super().since_state(stream, state, since)
        return since_checkpoint(self.transactions, upgrade_checkpoint(state), since)

    def __init__(self, settings: ConnectionSettings, *, policies: ConnectionPolicies | None = None) -> None:
        super().__init__(settings, policies=policies)
        self.transactions = tune(TRANSACTIONS, page_size=self.options.page_size, lookback=self.options.lookback)
        self.client = self.http_client(
            settings.base_url.rstrip("/") + "/", classify=self._classify, max_connections=2,
            headers={"Authorization": f"Bearer {settings.credentials['access_token']}"})

    def _classify(self, response: httpx.Response) -> ProviderError | None:
        error = classify(response)
        if isinstance(error, ReauthRequired) and error.status == 401:
            return ReauthRequired(f"{error}; the user token was refused: {REAUTH_HINT.format(name=self.settings.name)}",
                                  status=error.status, code=error.code)
        return error

    async def probe(self) -> None:
        await self.client.get_json(CONNECTIONS.path)

    async def sync_entity(
        self, stream: StreamSpec, state: dict[str, Any] | None, mode: SyncMode, ctx: SyncContext
    ) -> None:
        if stream.name == CONNECTIONS.name:
            await self._sync_connections(ctx)
        elif stream.name == ACCOUNTS.name:
            await self._sync_accounts(ctx)
        elif stream.name == TRANSACTIONS.name:
            await run_listing(self.transactions, upgrade_checkpoint(state), mode, ctx, self.client)
        else:
            raise PermanentError(f"powens has no stream {stream.name!r}")

    # -- bank connections and accounts: small, listed whole ------------------------------------------

    async def _sync_connections(self, ctx: SyncContext) -> None:
        body, _ = await self.client.get_json(CONNECTIONS.path)
        rows = _records(body, "connections")
        needs_customer: list[str] = []
        failures: list[tuple[str | None, str]] = []
        for row in rows:
            state = row.get("state")
            if state is None:
                continue
            what = f"bank connection {row.get('id')}: {state}"
            if row.get("error_message"):
                what += f" ({row['error_message']})"
            if state in USER_ACTION:
                needs_customer.append(what)
                failures.append((None, f"{what}: the bank customer must act (Powens webview) before it syncs again"))
            elif state in TRANSIENT:
                log.info("powens.connection_retrying", connection=self.settings.name, bank_connection=row.get("id"),
                         state=state)
            else:
                failures.append((None, f"{what}: unknown state, recorded"))
        await ctx.emit(Page(CONNECTIONS.name, rows, None, total=len(rows), failures=failures,
                            full_listing=True, listing_complete=True))
        if rows and len(needs_customer) == len(rows):
            raise ReauthRequired("every Powens bank connection needs the bank customer: " + "; ".join(needs_customer),
                                 code="user_action")

    async def _sync_accounts(self, ctx: SyncContext) -> None:
        try:
            body, _ = await self.client.get_json(ACCOUNTS.path, params={"all": ""})
        except PermanentError as exc:
            if exc.code != "noAccount":
                raise
            body = {"accounts": []}  # Powens answers 400 noAccount for a user without accounts
        rows = _records(body, "accounts")
        live = [r for r in rows if not r.get("deleted")]
        gone = [str(r.get("id")) for r in rows if r.get("deleted")]
        await ctx.emit(Page(ACCOUNTS.name, live, None, deleted=gone, total=len(live), full_listing=True,
                            listing_complete=True))

    # -- transactions: incremental by last_update ----------------------------------------------------

    async def fetch_items(self, stream: StreamSpec, ids: Sequence[str], ctx: SyncContext) -> None:
        """`freshctl retry` for transactions: by id; gone or deleted ones become tombstones."""
        if stream.name != TRANSACTIONS.name:
            await super().fetch_items(stream, ids, ctx)
            return
        await fetch_by_id(self.transactions, ids, ctx, self.client)


def _records(body: Any, key: str) -> list[dict[str, Any]]:
    rows = body.get(key) if isinstance(body, dict) else None
    if not isinstance(rows, list):
        raise TransientError(f"Powens: expected {{{key!r}: [...]}} in the answer")
    return [r for r in rows if isinstance(r, dict)]


def upgrade_checkpoint(state: dict[str, Any] | None) -> dict[str, Any]:
    """A transactions checkpoint written before the listing engine, as the engine's schema.

    ``{"phase": "done", "since"}`` is the cursor; a listing that was under way
    (``{"phase": "listing", "listing_since", "offset", ...}``) starts again from the filter it
    sent: its rows are read again, which costs nothing when they did not change.
    """
    if not state or "phase" not in state:
        return state or {}
    cursor = state.get("since") if state.get("phase") == "done" else state.get("listing_since")
    return {"cursor": cursor} if cursor else {}
