"""Orion Advisor API (Orion Connect): clients (households), accounts, and AUM history per client.

Sections, in the order every provider module keeps them: auth, error
classification, streams, sync.

* **Auth**: ``GET /v1/Security/Token`` with Basic ``username:password`` gives a
  session token (10 h) sent as ``Authorization: Session <token>``.  Partner apps
  (credentials ``client_id`` + ``client_secret``, sent as headers) also get a
  refresh token; the next refresh is the same GET with ``Authorization: Bearer
  <refresh_token>``.  Refresh tokens are **single use**: each answer carries the
  next one, which the TokenRefresher persists before the new session is used.
  A refused refresh token falls back to the password when there is one; a
  refused password is ReauthRequired.
* **Errors**: Orion declares no error schema.  401 on a data call -> AuthExpired
  (one refresh, one resend); on the token call -> ReauthRequired.  429 ->
  RateLimited; 5xx -> TransientError; other 4xx -> PermanentError.
* **Streams**: ``clients`` (``/Portfolio/Clients``: no edited-date filter, so
  listed whole each sync, which also finds deletions), ``accounts``
  (``/Portfolio/Accounts`` with ``editedStartDate`` for incremental syncs and a
  full listing at least every ``accounts_full_interval``), ``aum_history``
  (``/Portfolio/Clients/{id}/AumOverTime`` per stored client: daily points,
  re-pulled from ``aum_lookback_days`` before the last pull because AUM gets
  restated; new clients and, at least every ``aum_full_interval``, everyone
  from the first pull's start).  Lists are bare arrays paged with
  ``$top``/``$skip`` until a short page; pages overlap by one row, so rows that
  come or go mid-listing are noticed and deletions are not inferred from it.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from typing import Any

from freshd.connectors.base import ConnectionSettings, Connector, Page, Problems, SyncContext, SyncMode
from freshd.connectors.cursors import due
from freshd.connectors.errors import ErrorTable, classify_with
from freshd.connectors.listing import fetch_by_id, run_listing, since_checkpoint, tune
from freshd.connectors.pagination import fetch_in_order
from freshd.connectors.paginators import OffsetPaging
from freshd.connectors.schema import rules
from freshd.connectors.streams import Incremental, Listing, StreamSpec, columns
from freshd.errors import PermanentError, ReauthRequired, TransientError
from freshd.policies.gate import ConnectionPolicies
from freshd.policies.tokens import Token

PAGE_SIZE = 1000
TOKEN_LIFETIME = 36000.0
ACCOUNTS_LOOKBACK = 300.0
ACCOUNTS_FULL_INTERVAL = 86400.0
AUM_LOOKBACK_DAYS = 7
AUM_HISTORY_DAYS = 730
AUM_CONCURRENCY = 4
AUM_INTERVAL = 6 * 3600.0
AUM_FULL_INTERVAL = 7 * 86400.0
PAGING = ("odata", "plain")
TIME_FORMAT = "%Y-%m-%dT%H:%M:%S"


@dataclass(frozen=True, slots=True)
class OrionOptions:
    """A connection's options (seconds unless named in days)."""

    paging: str = "odata"  # $top/$skip (OData), or "plain" top/skip
    page_size: int = PAGE_SIZE
    accounts_lookback: float = ACCOUNTS_LOOKBACK
    accounts_full_interval: float = ACCOUNTS_FULL_INTERVAL
    aum_lookback_days: int = AUM_LOOKBACK_DAYS
    aum_history_days: int = AUM_HISTORY_DAYS
    aum_interval: float = AUM_INTERVAL
    aum_full_interval: float = AUM_FULL_INTERVAL

    def __post_init__(self) -> None:
        rules(("paging", self.paging in PAGING, f"unknown paging {self.paging!r}; valid: {', '.join(PAGING)}"),
              ("page_size", 1 <= self.page_size <= 5000, f"expected 1 to 5000, got {self.page_size}"),
              *((key, getattr(self, key) >= 0, f"expected 0 or more, got {getattr(self, key)}")
                for key in ("accounts_lookback", "accounts_full_interval", "aum_lookback_days", "aum_history_days",
                            "aum_interval", "aum_full_interval")))

# --- auth --------------------------------------------------------------------------------------------


def session_header(token: Token) -> dict[str, str]:
    return {"Authorization": f"Session {token.access_token}"}


# --- error classification --------------------------------------------------------------------------


# Orion declares no error schema; ASP.NET answers `{"Message": ...}`.  Data calls map by status (401:
# one refresh, one resend); the token call's 400/401/403 are refused credentials, not worth a retry.
ERRORS = ErrorTable("Orion", message=("Message", "message", ""), text="{provider} {status}: {message}",
                    note_header=("x-oas-correlationid", "correlation"))
TOKEN_ERRORS = replace(ERRORS, reauth_statuses=frozenset({400, 401, 403}),
                       reauth_text="{provider} refused the credentials ({status}): {message}")
classify = classify_with(ERRORS)
classify_token = classify_with(TOKEN_ERRORS)


# --- streams ------------------------------------------------------------------------------------------

_DATES = ("created_at=createdDate:timestamptz", "edited_at=editedDate:timestamptz")
# bare arrays paged with $top/$skip until a short page; pages overlap by one row, so rows that come or go
# mid-listing are noticed (nothing is inferred from such a listing and the cursor stays)
_PAGING = OffsetPaging(offset_param="$skip", limit_param="$top", limit=PAGE_SIZE, verify_overlap=True)
_PLAIN = replace(_PAGING, offset_param="skip", limit_param="top")  # option paging = "plain"
CLIENTS = StreamSpec("clients", "Portfolio/Clients", cursor_field="editedDate", listing=Listing(_PAGING),
                     columns=columns(
    "id:integer", "name", "first_name=firstName", "last_name=lastName", "email", "is_active=isActive:boolean",
    "aum:numeric", "representative_id=representativeId:integer", "category", "start_date=startDate:timestamptz",
    *_DATES))
ACCOUNTS = StreamSpec("accounts", "Portfolio/Accounts", cursor_field="editedDate", cursor_param="editedStartDate",
                      listing=Listing(_PAGING, incremental=Incremental(
                          "editedDate", "editedStartDate", TIME_FORMAT, ACCOUNTS_LOOKBACK, until_start=True),
                          track_full=True), columns=columns(
    "id:integer", "client_id=clientId:integer", "name", "number", "custodian", "account_type=accountType",
    "is_active=isActive:boolean", "current_value=currentValue:numeric", "status=accountStatusDescription",
    *_DATES))
AUM_HISTORY = StreamSpec("aum_history", "Portfolio/Clients/{id}/AumOverTime", cursor_field="asOfDate",
                         columns=columns("client_id=clientId:integer", "as_of=asOfDate:timestamptz", "value:numeric"))


def _now() -> str:
    return datetime.now(UTC).strftime(TIME_FORMAT)


# --- sync -----------------------------------------------------------------------------------------------


class OrionConnector(Connector):
    provider = "orion"
    options_type = OrionOptions
    options: OrionOptions
    # username and password, or a partner refresh_token with client_id and client_secret:
    # alternatives of several keys, checked by validate_settings
    required_credentials = ()
    streams = (CLIENTS, ACCOUNTS, AUM_HISTORY)
    since_streams = frozenset({ACCOUNTS.name})  # clients have no edited filter; AUM is by date range

    def since_state(self, stream: StreamSpec, state: dict[str, Any] | None, since: datetime) -> dict[str, Any]:
        """An accounts listing filtered by editedStartDate=`since`, keeping the stored cursor as its floor."""
        if stream.name != ACCOUNTS.name:
            return super().since_state(stream, state, since)
        return since_checkpoint(self.accounts, upgrade_checkpoint(state), since)

    def __init__(self, settings: ConnectionSettings, *, policies: ConnectionPolicies | None = None) -> None:
        self.validate_settings(settings)
        super().__init__(settings, policies=policies)
        options = self.options
        self.paging = _PLAIN if options.paging == "plain" else _PAGING  # top/skip instead of OData's $top/$skip
        self.clients, self.accounts = (tune(s, paginator=self.paging, page_size=options.page_size,
                                            lookback=options.accounts_lookback) for s in (CLIENTS, ACCOUNTS))
        base = settings.base_url.rstrip("/") + "/"
        creds = settings.credentials
        self._partner = {"client_id": creds["client_id"], "client_secret": creds["client_secret"]} \
            if creds.get("client_id") else {}
        self.client = self.http_client(base + "v1/", classify=classify, token_header=session_header, max_connections=4)
        self.auth = self.http_client(base, classify=classify_token, max_connections=1)

    @classmethod
    def validate_settings(cls, settings: ConnectionSettings) -> None:
        creds = settings.credentials
        where = f"connection {settings.name}"
        problems = Problems()
        has_password = bool(creds.get("username") and creds.get("password"))
        if not has_password and not creds.get("refresh_token"):
            problems.add("missing credentials: username and password (or a partner refresh_token)", where=where)
        if bool(creds.get("client_id")) != bool(creds.get("client_secret")):
            problems.add("client_id and client_secret go together (partner apps)", where=where)
        if creds.get("refresh_token") and not creds.get("client_id"):
            problems.add("a refresh_token needs the partner client_id and client_secret", where=where)
        with problems.collect():
            cls.read_options(settings)
        problems.check()

    async def aclose(self) -> None:
        await self.client.aclose()
        await self.auth.aclose()

    # -- tokens ---------------------------------------------------------------------------------------

    async def refresh_token(self, current: Token | None) -> Token:
        creds = self.settings.credentials
        refresh = (current.refresh_token if current is not None else None) or creds.get("refresh_token")
        if refresh and self._partner:
            try:
                return await self._token({"Authorization": f"Bearer {refresh}"})
            except ReauthRequired:
                if not (creds.get("username") and creds.get("password")):
                    raise ReauthRequired("Orion refused the refresh token (used already, or revoked) and no "
                                         "password is configured: set a new one with `freshctl connections "
                                         f"set-credential {self.settings.name} refresh_token=...`") from None
        basic = base64.b64encode(f"{creds['username']}:{creds['password']}".encode()).decode()
        try:
            return await self._token({"Authorization": f"Basic {basic}"})
        except ReauthRequired as exc:
            raise ReauthRequired(f"{exc}: set the current password with `freshctl connections set-credential "
                                 f"{self.settings.name} password=...`", status=exc.status, code=exc.code) from None

    async def _token(self, authorization: dict[str, str]) -> Token:
        body, _ = await self.auth.get_json("v1/Security/Token", headers={**authorization, **self._partner},
                                           limit="token")
        if not isinstance(body, dict) or not isinstance(body.get("access_token"), str):
            raise TransientError("Orion: no access_token in the token answer")
        try:
            lifetime = float(body.get("expires_in", TOKEN_LIFETIME))
        except (TypeError, ValueError):
            lifetime = TOKEN_LIFETIME
        # the refresh token just used is spent: keep the new one (None when Basic gave none)
        return Token(body["access_token"], time.time() + lifetime, body.get("refresh_token") or None)

    async def probe(self) -> None:
        await self.client.get_json(CLIENTS.path, params={self.paging.limit_param: 1, self.paging.offset_param: 0})

    # -- listing ----------------------------------------------------------------------------------------

    async def sync_entity(
        self, stream: StreamSpec, state: dict[str, Any] | None, mode: SyncMode, ctx: SyncContext
    ) -> None:
        state = upgrade_checkpoint(state)
        if stream.name == CLIENTS.name:  # no edited filter: listed whole each sync, which finds deletions
            await run_listing(self.clients, state, mode, ctx, self.client)
        elif stream.name == ACCOUNTS.name:  # incremental, and whole at least every accounts_full_interval
            full = mode is SyncMode.FULL or not state.get("cursor") or \
                due(state.get("full_at"), self.options.accounts_full_interval)
            await run_listing(self.accounts, state, mode, ctx, self.client, full=full)
        elif stream.name == AUM_HISTORY.name:
            await self._aum(state, mode, ctx)
        else:
            raise PermanentError(f"orion has no stream {stream.name!r}")

    # -- AUM over time ------------------------------------------------------------------------------------

    async def _aum(self, state: dict[str, Any], mode: SyncMode, ctx: SyncContext) -> None:
        """Daily AUM points for every stored client, a few clients at a time, handed on in id order.

        A pull reads every client once.  A *full* pull (full syncs, the first pull, and at least
        every `aum_full_interval`) reads from the origin (the first pull's start, kept in the state,
        so history is never dropped) and then marks points it did not see deleted (clients gone,
        restated history).  Other pulls re-read the last `aum_lookback_days`, except for clients
        created since the last pull, whose whole history is read.
        """
        today = datetime.now(UTC).date()
        if state.get("phase") == "listing" and state.get("mode") == mode.value and isinstance(state.get("plan"),
                                                                                                  dict):
            plan, resume = dict(state["plan"]), True
        else:
            resume = False
            through = state.get("through")
            origin = state.get("origin") or (today - timedelta(days=self.options.aum_history_days)).isoformat()
            full = mode is SyncMode.FULL or not through or \
                due(state.get("full_at"), self.options.aum_full_interval)
            if not full and not due(state.get("pulled_at"), self.options.aum_interval):
                return  # daily figures: one pull per aum_interval is enough (one request per client)
            start = origin if full or not through else \
                max(origin, (date.fromisoformat(through) - timedelta(days=self.options.aum_lookback_days)).isoformat())
            # clients created from the day before the last pull on are new to AUM: their whole history
            new_since = (date.fromisoformat(through) - timedelta(days=1)).isoformat() if through else None
            plan = {"origin": origin, "start": start, "end": today.isoformat(), "full": full, "after": 0,
                    "new_since": new_since, "pulled_at": _now()}
        created = await ctx.known_versions(CLIENTS.name, "createdDate")
        if not created and not state.get("through"):
            return  # no clients stored yet (their stream failed?): a pull now would record nothing
        todo = sorted(int(c) for c in created if c.isdigit() and int(c) > int(plan["after"]))
        # no count in the API: about one point per client and day of the window (an estimate; a client
        # new to AUM brings its whole history, so the engine raises the guess if it falls short)
        days = (date.fromisoformat(plan["end"]) - date.fromisoformat(plan["start"])).days + 1
        ctx.set_total(AUM_HISTORY.name, len(todo) * max(days, 1), estimated=True)
        full = bool(plan["full"])
        complete = full and not resume  # only a pull read whole in this run may infer deletions
        full_at = plan["pulled_at"] if complete else state.get("full_at")
        done: dict[str, Any] = {"phase": "done", "origin": plan["origin"], "through": plan["end"],
                                "pulled_at": plan["pulled_at"], **({"full_at": full_at} if full_at else {})}
        if not todo:
            await ctx.emit(Page(AUM_HISTORY.name, [], done, full_listing=full, listing_complete=complete))
            return
        new_since = plan.get("new_since")

        def window(cid: int) -> dict[str, str]:
            stamp = created.get(str(cid), "")
            new = bool(new_since) and stamp[:10] >= str(new_since) and stamp[:4].isdigit()
            first = plan["origin"] if new else plan["start"]
            return {"startDate": first, "endDate": plan["end"], "interval": "D"}

        async def fetch(index: int) -> Page | None:
            cid = todo[index]
            try:
                body, _ = await self.client.get_json(f"Portfolio/Clients/{cid}/AumOverTime", params=window(cid))
            except PermanentError as exc:
                if exc.status == 404:
                    return None  # removed since the clients listing: the next full pull tombstones its points
                raise
            if not isinstance(body, list):
                raise TransientError(f"Orion AumOverTime for client {cid}: expected a JSON array")
            records, failures = [], []
            for point in body:
                day = str(point.get("asOfDate") or "")[:10] if isinstance(point, dict) else ""
                if len(day) == 10 and day[:4].isdigit():
                    records.append(_aum_record(cid, day, point))
                else:  # without its day a point has no id; the rest of the client's points still count
                    failures.append((None, f"client {cid}: AUM point without a valid asOfDate: {str(point)[:100]}"))
            return Page(AUM_HISTORY.name, records, None, failures=failures)

        async def consume(index: int, fetched: Page | None) -> None:
            last_one = index == len(todo) - 1
            checkpoint = done if last_one else \
                {"phase": "listing", "mode": mode.value, "plan": {**plan, "after": todo[index]},
                 "origin": plan["origin"],
                 **{k: state[k] for k in ("through", "full_at", "pulled_at") if state.get(k)}}
            await ctx.emit(Page(AUM_HISTORY.name, fetched.records if fetched else [], checkpoint,
                                failures=fetched.failures if fetched else (), full_listing=full,
                                listing_complete=complete and last_one))

        await fetch_in_order(fetch, range(len(todo)), consume, concurrency=AUM_CONCURRENCY)

    async def fetch_items(self, stream: StreamSpec, ids: Sequence[str], ctx: SyncContext) -> None:
        """`freshctl retry` for clients and accounts: by id; 404s become tombstones."""
        if stream.name not in (CLIENTS.name, ACCOUNTS.name):
            await super().fetch_items(stream, ids, ctx)
            return
        await fetch_by_id(self.stream(stream.name), ids, ctx, self.client)


def _aum_record(client_id: int, day: str, point: dict[str, Any]) -> dict[str, Any]:
    """One point per client and day (and grouping, if Orion ever sends one other than 0): the id says
    which.  Orion's own `id` is the entity's, kept as `entityId`."""
    grouping = point.get("grouping")
    suffix = f":{grouping}" if grouping not in (None, 0, "0") else ""
    return {**point, "id": f"{client_id}:{day}{suffix}", "entityId": point.get("id"), "clientId": client_id}


def upgrade_checkpoint(state: dict[str, Any] | None) -> dict[str, Any]:
    """A clients/accounts checkpoint written before the listing engine, as the engine's schema.

    ``{"phase": "done", "since", "full_at"?}``: the cursor and full_at.  A listing that was under way
    (``{"phase": "listing", "listing_since", "skip", "last_id", ...}``) starts again from the filter
    it sent (a full one, if it sent none): its rows are read again, which costs nothing when they
    did not change.  AUM checkpoints have their own shape (``through``, ``plan``) and pass as they are.
    """
    if not state or "phase" not in state or "through" in state or "plan" in state or "origin" in state:
        return state or {}
    cursor = state.get("since") if state.get("phase") == "done" else state.get("listing_since")
    return {key: value for key, value in (("cursor", cursor), ("full_at", state.get("full_at"))) if value}
