"""Generic REST: a connector defined entirely by the connection's options (see config.py).

Sections, in the order every provider module keeps them: auth, error
classification, streams, sync.

* **Auth** (``options.auth``): ``none``; ``bearer`` (credentials.token);
  ``basic`` (credentials.username/password); ``api_key`` in a header or a
  query parameter (credentials.api_key); ``oauth2_refresh``
  (credentials.client_id/client_secret/refresh_token, POSTed to ``token_url``
  as an RFC 6749 refresh grant; a rotated refresh token is kept; a refused
  grant is ReauthRequired, never retried).
* **Streams** (``options.streams``): each a GET of ``path`` (relative to
  base_url) with static ``params``, records at ``records_path``, paged by its
  paginator kind (paginators.py), every listing behind a LoopGuard.  Each
  stream's requests use the rate-limit bucket named like the stream
  (``options.rate_limits.<stream>``), the connection's ``rate_limit`` otherwise.
* **Incremental** (``cursor_field`` + ``incremental_param``): the checkpoint
  keeps the highest ``cursor_field`` seen; the next sync sends it (formatted by
  ``incremental_format``, minus ``lookback``) as ``incremental_param``.  The
  cursor moves only when a listing completes, or page by page when the
  stream declares ``cursor_ascending`` (records come sorted by the cursor, so
  everything below the highest value seen is already stored).  A listing
  that shifted under us (the reported total changed, or an id came back on a
  later page) keeps the old cursor, so the next sync reads that span again.
* **Resuming**: every page's checkpoint carries the pager's position; an
  interrupted listing with the same filter and stream definition continues
  at the next page.
* **Full listings** (a full sync, the first sync, or a stream without a
  server-side filter, which is listed whole every time) mark every page
  ``full_listing``; the last page sets ``listing_complete`` when the whole
  listing was read in this run without shifting and returned records, so the
  engine marks stored records it did not see as deleted.
* **Soft deletes**: records matching ``soft_delete`` are stored and marked deleted.
"""

from __future__ import annotations

import hashlib
import time
import urllib.parse
from collections.abc import Generator, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import structlog

from freshd.connectors.base import (
    ConnectionSettings,
    Connector,
    Page,
    StreamSpec,
    SyncContext,
    SyncMode,
)
from freshd.connectors.errors import ErrorTable, classify_with
from freshd.connectors.http import Classify, ProviderClient, bearer
from freshd.connectors.pagination import LoopGuard
from freshd.connectors.rest.config import (
    ApiKeyAuth,
    BasicAuth,
    BearerAuth,
    OAuth2RefreshAuth,
    RestOptions,
    RestStream,
    dig,
    param_text,
    parse_options,
    read_options,
)
from freshd.connectors.rest.paginators import PageRead, start_pager
from freshd.errors import (
    PermanentError,
)
from freshd.policies.gate import ConnectionPolicies
from freshd.policies.tokens import Token

FETCH_BATCH = 100  # records per page when fetching by id

log = structlog.get_logger(__name__)


class _StaleResume(Exception):
    """The first request of a resumed listing was refused: start the listing over."""

# --- auth --------------------------------------------------------------------------------------


class QueryKey(httpx.Auth):
    """An API key in the query string, added to every request (followed links included)."""

    def __init__(self, param: str, key: str) -> None:
        self._params = {param: key}

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.url = request.url.copy_merge_params(self._params)
        yield request


def _static_auth(options: RestOptions, credentials: Mapping[str, str]) -> tuple[httpx.Auth | None, dict[str, str]]:
    """(httpx auth, headers) for the kinds without tokens to refresh."""
    match options.auth:
        case BearerAuth():
            return None, {"Authorization": f"Bearer {credentials['token']}"}
        case BasicAuth():
            return httpx.BasicAuth(credentials["username"], credentials.get("password", "")), {}
        case ApiKeyAuth(header=str(header)):
            return None, {header: credentials["api_key"]}
        case ApiKeyAuth(param=str(param)):
            return QueryKey(param, credentials["api_key"]), {}
    return None, {}


# --- error classification --------------------------------------------------------------------

# the usual error bodies: {"error": {"code", "message"}}, {"error": "code", "error_description"} (OAuth),
# {"code", "message"}, {"detail"/"title"}; a 503 with Retry-After means "come back later"
ERRORS = ErrorTable("HTTP", code=("error.code", "error.type", "error", "code"),
                    message=("error.message", "error_description", "message", "detail", "title"),
                    text="{provider} {status} from {url}: {message}", wait_statuses=frozenset({503}))
# static credentials: nothing to refresh, so a 401 means "credentials rejected: stop and ask"
STATIC_ERRORS = replace(ERRORS, reauth_statuses=frozenset({401}))
# the token endpoint: a grant or client refused (RFC 6749 §5.2) will not get a token on a retry
TOKEN_ERRORS = replace(STATIC_ERRORS, reauth=frozenset({"invalid_grant", "invalid_client", "unauthorized_client",
                                                        "unsupported_grant_type"}),
                       reauth_text="token endpoint refused the refresh ({status} {code}): {message}")
classify_token = classify_with(TOKEN_ERRORS)


def make_classify(*, refreshable: bool) -> Classify:
    """401 means "refresh the token" with OAuth (the framework refreshes once, then gives up) and
    "credentials rejected" with static credentials."""
    return classify_with(ERRORS if refreshable else STATIC_ERRORS)


# --- streams -----------------------------------------------------------------------------------


def read_records(body: Any, stream: RestStream) -> list[Any]:
    """The page's records at `records_path` (the body itself if none).

    A path that is not in the body is an error, not an empty page: a misconfigured path must not
    look like an empty collection (a complete empty listing would mark everything deleted).
    """
    found = body
    if stream.records_path is not None:
        try:
            found = dig(body, stream.records_path)
        except KeyError:
            raise PermanentError(f"{stream.name}: records_path {stream.records_path!r} is not in the response") \
                from None
    if found is None:
        return []
    if not isinstance(found, list):
        where = f"records_path {stream.records_path!r}" if stream.records_path else "the response body"
        raise PermanentError(f"{stream.name}: expected a list at {where}, got {type(found).__name__}")
    return found


def cursor_value(record: Any, path: str) -> Any:
    try:
        return dig(record, path)
    except KeyError:
        return None


def _moment(value: Any) -> datetime | None:
    """A cursor value as an aware datetime: ISO 8601 (naive = UTC) or epoch seconds/milliseconds."""
    number = _number(value)
    if number is not None:
        seconds = number / 1000 if abs(number) > 1e11 else number  # beyond year 5138 in seconds: milliseconds
        try:
            return datetime.fromtimestamp(seconds, UTC)
        except (OverflowError, OSError, ValueError):
            return None
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            return None
        return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    return None


def _order(value: Any) -> tuple[int, Any] | None:
    """A sort key for cursor values: numbers, then dates, then other strings; None: not a cursor."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return (0, float(value))
    if isinstance(value, str):
        moment = _moment(value)
        return (1, moment.timestamp()) if moment is not None else (2, value)
    return None


def later(a: Any, b: Any) -> Any:
    """The higher of two cursor values (either may be None)."""
    ka, kb = _order(a), _order(b)
    if kb is None:
        return a
    if ka is None:
        return b
    return b if kb > ka else a


def _number(value: Any) -> float | None:
    """A numeric cursor (a number, or a string of digits), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str) and value.strip().lstrip("-").replace(".", "", 1).isdigit():
        return float(value)
    return None


def _like(original: str, moment: datetime) -> str:
    """`moment` written the way the ISO 8601 `original` was (Z, offset or naive; fraction or not; T or space)."""
    text = original.strip()
    sep = " " if " " in text else "T"
    spec = "microseconds" if "." in text.rsplit(sep, maxsplit=1)[-1] else "seconds"
    written = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    if text.endswith(("Z", "z")):
        return moment.astimezone(UTC).replace(tzinfo=None).isoformat(sep, spec) + "Z"
    if written.tzinfo is not None:
        return moment.astimezone(written.tzinfo).isoformat(sep, spec)
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(sep, spec)


def format_cursor(value: Any, fmt: str, lookback: float) -> str:
    """The checkpointed cursor as `incremental_param` sends it: `fmt` is raw (as the records have
    it), iso8601 (UTC, Z), epoch, epoch_ms or a strftime pattern (UTC); minus `lookback` seconds
    (a numeric cursor sent raw: minus `lookback` in its own units)."""
    if fmt == "raw" and not lookback:
        return param_text(value)
    if fmt == "raw" and (number := _number(value)) is not None:
        shifted = number - lookback
        return str(int(shifted)) if shifted.is_integer() else str(shifted)
    moment = _moment(value)
    if moment is None:
        raise PermanentError(f"cursor value {value!r} is not a date or an epoch time: cannot apply "
                             f"incremental_format {fmt!r} / lookback")
    moment -= timedelta(seconds=lookback)
    match fmt:
        case "raw":
            return _like(str(value), moment)
        case "iso8601":
            return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        case "epoch":
            return str(int(moment.timestamp()))
        case "epoch_ms":
            return str(int(moment.timestamp() * 1000))
    return moment.astimezone(UTC).strftime(fmt)


def _fingerprint(stream: RestStream) -> str:
    """What makes a listing the same listing (a resumed position means nothing for another one)."""
    shape = repr((stream.path, sorted((k, param_text(v)) for k, v in stream.params.items()), stream.paginator,
                  stream.records_path, stream.incremental_param, stream.incremental_format, stream.lookback))
    return hashlib.blake2b(shape.encode(), digest_size=8).hexdigest()


# --- sync --------------------------------------------------------------------------------------


class RestConnector(Connector):
    provider = "rest"
    # decided by options.auth (each auth kind lists its credentials): read_options checks them
    required_credentials = ()
    # per connection (options.streams), not per class: the engine reads it from the instance
    streams: tuple[StreamSpec, ...] = ()  # type: ignore[misc]

    @classmethod
    def validate_settings(cls, settings: ConnectionSettings) -> None:
        read_options(settings)

    @classmethod
    def streams_for(cls, settings: ConnectionSettings) -> tuple[StreamSpec, ...]:
        return tuple(stream.spec() for stream in read_options(settings).streams)

    @classmethod
    def declared_streams(cls, options: Mapping[str, Any]) -> tuple[StreamSpec, ...]:
        return tuple(stream.spec() for stream in parse_options(options).streams)

    @classmethod
    def since_problem(cls, stream: StreamSpec) -> str | None:
        if stream.cursor_param is None:
            return (f"stream {stream.name} has no incremental_param (a server-side filter), so it cannot be "
                    f"re-read from a date")
        return None

    def since_state(self, stream: StreamSpec, state: dict[str, Any] | None, since: datetime) -> dict[str, Any]:
        """The cursor set to `since` (formatted by the stream's incremental_format when sent)."""
        if self.since_problem(stream):
            return super().since_state(stream, state, since)
        return {"cursor": since.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}

    def __init__(self, settings: ConnectionSettings, *, policies: ConnectionPolicies | None = None) -> None:
        self.options = read_options(settings)  # ConfigError before anything else happens
        super().__init__(settings, policies=policies)
        self.streams = tuple(stream.spec() for stream in self.options.streams)
        self.concurrency = self.options.page_concurrency  # read by the engine
        base = settings.base_url.rstrip("/") + "/"
        self.origin = httpx.URL(base)
        headers = {"Accept": "application/json", **self.options.headers}
        auth = self.options.auth
        if isinstance(auth, OAuth2RefreshAuth):
            self.token_url = str(self.origin.join(auth.token_url))
            # the token request passes the same gate (own bucket), without a token of its own
            self.token_client: ProviderClient | None = self.http_client(
                "", classify=classify_token, headers={"Accept": "application/json"}, timeout=self.options.timeout)
            self.client = self.http_client(base, classify=make_classify(refreshable=True), headers=headers,
                                           token_header=bearer, timeout=self.options.timeout)
        else:
            self.token_client = None
            static, extra = _static_auth(self.options, settings.credentials)
            self.client = self.http_client(base, classify=make_classify(refreshable=False), auth=static,
                                           headers={**headers, **extra}, timeout=self.options.timeout)

    async def aclose(self) -> None:
        await self.client.aclose()
        if self.token_client is not None:
            await self.token_client.aclose()

    @property
    def uses_tokens(self) -> bool:
        # per connection: the class overrides refresh_token, but only oauth2_refresh has tokens
        return isinstance(self.options.auth, OAuth2RefreshAuth)

    async def refresh_token(self, current: Token | None) -> Token:
        auth = self.options.auth
        if not isinstance(auth, OAuth2RefreshAuth) or self.token_client is None:
            return await super().refresh_token(current)
        creds = self.settings.credentials
        # a rotated refresh token (persisted with the last access token) beats the configured one
        refresh = current.refresh_token if current is not None and current.refresh_token else creds["refresh_token"]
        form = {"grant_type": "refresh_token", "refresh_token": refresh}
        if auth.scope:
            form["scope"] = auth.scope
        kwargs: dict[str, Any] = {}
        if auth.client_auth == "basic":
            kwargs["auth"] = httpx.BasicAuth(urllib.parse.quote_plus(creds["client_id"]),
                                             urllib.parse.quote_plus(creds["client_secret"]))
        else:
            form.update(client_id=creds["client_id"], client_secret=creds["client_secret"])
        body, _ = await self.token_client.request_json("POST", self.token_url, data=form, limit="token", **kwargs)
        if not isinstance(body, dict) or not isinstance(body.get("access_token"), str):
            raise PermanentError("token endpoint answered without an access_token")
        expires_in = body.get("expires_in")
        try:
            expires_at = time.time() + float(expires_in) if expires_in is not None else None
        except (TypeError, ValueError):
            expires_at = None
        extra = {k: body[k] for k in ("token_type", "scope") if k in body}
        return Token(body["access_token"], expires_at, str(body.get("refresh_token") or refresh), extra)

    async def probe(self) -> None:
        stream = self.options.streams[0]
        pager = start_pager(stream.paginator, LoopGuard(stream.name), origin=self.origin)
        await self.client.get_json(stream.path, params={**self._params(stream, None), **pager.ask().params},
                                   limit=stream.name)

    def _params(self, stream: RestStream, since: str | None) -> dict[str, str]:
        params = {k: param_text(v) for k, v in stream.params.items()}
        if since is not None and stream.incremental_param is not None:
            params[stream.incremental_param] = since
        return params

    def _since(self, stream: RestStream, cursor: Any) -> str | None:
        if stream.incremental_param is None or cursor is None:
            return None
        return format_cursor(cursor, stream.incremental_format, stream.lookback)

    def _deleted(self, stream: RestStream, records: Sequence[Any]) -> list[str]:
        rule = stream.soft_delete
        if rule is None:
            return []
        return [str(r[stream.primary_key]) for r in records
                if isinstance(r, dict) and r.get(stream.primary_key) is not None
                and cursor_value(r, rule.field) in rule.values]

    async def sync_entity(
        self, stream: StreamSpec, state: dict[str, Any] | None, mode: SyncMode, ctx: SyncContext
    ) -> None:
        config = self.options.stream(stream.name)
        state = state or {}
        cursor = state.get("cursor")
        since = self._since(config, cursor) if mode is SyncMode.INCREMENTAL else None
        listing = state.get("listing")
        # an interrupted listing with the same filter and definition continues where it stopped
        resume = listing if isinstance(listing, dict) and isinstance(listing.get("pager"), dict) \
            and listing.get("since") == since and listing.get("fingerprint") == _fingerprint(config) else None
        try:
            await self._listing(config, cursor, since, resume, ctx)
        except _StaleResume as exc:
            # the server refused the saved position (an expired cursor token): nothing was emitted
            log.info("rest.resume_refused", stream=config.name, error=str(exc.__cause__))
            await self._listing(config, cursor, since, None, ctx)

    async def _listing(
        self, config: RestStream, cursor: Any, since: str | None, resume: dict[str, Any] | None, ctx: SyncContext
    ) -> None:
        """One listing, page by page, each page emitted with the checkpoint to commit with it."""
        full = since is None  # nothing filtered out on the server: the listing is the whole collection
        fingerprint = _fingerprint(config)
        pager = start_pager(config.paginator, LoopGuard(f"{config.name} ({config.path})"), origin=self.origin)
        max_seen: Any = None
        first_total: int | None = None
        if resume is not None:
            try:
                pager.restore(resume["pager"])
            except (KeyError, TypeError, ValueError):
                pager = start_pager(config.paginator, LoopGuard(f"{config.name} ({config.path})"),
                                    origin=self.origin)
                resume = None  # an unreadable position: start over
            else:
                max_seen, first_total = resume.get("max"), resume.get("total")
        params = self._params(config, since)
        seen: set[str] = set()
        shifted = False
        any_records = False
        first_request = True
        while not pager.done:
            ask = pager.ask()
            try:
                if ask.url is None:
                    body, response = await self.client.get_json(config.path, params={**params, **ask.params},
                                                                limit=config.name)
                else:  # a followed link carries its own query
                    body, response = await self.client.get_json(ask.url, limit=config.name)
            except PermanentError as exc:
                if resume is not None and first_request and exc.status in (400, 404, 410, 422):
                    raise _StaleResume from exc
                raise
            first_request = False
            records = read_records(body, config)
            ids = [str(r[config.primary_key]) for r in records
                   if isinstance(r, dict) and r.get(config.primary_key) is not None]
            pager.advance(PageRead(records, ids, body, response.headers, response.request.url))
            if pager.total is not None:
                if first_total is None:
                    first_total = pager.total
                    ctx.set_total(config.name, first_total)
                elif pager.total != first_total:
                    shifted = True  # records came or went mid-listing: page boundaries moved
            if not seen.isdisjoint(ids):
                shifted = True  # an id came back on a later page: the pages moved under us
            seen.update(ids)
            any_records = any_records or bool(records)
            if config.cursor_field is not None:
                for record in records:
                    max_seen = later(max_seen, cursor_value(record, config.cursor_field))
            if pager.done:
                # a shifted listing may have skipped records: keep the old cursor, re-read next time
                checkpoint: dict[str, Any] = {"cursor": cursor if shifted else later(cursor, max_seen)}
            else:
                # sorted by the cursor, everything below the highest value seen is stored already
                moving = later(cursor, max_seen) if config.cursor_ascending and not shifted else cursor
                checkpoint = {"cursor": moving, "listing": {
                    "since": since, "fingerprint": fingerprint, "pager": pager.position(),
                    "max": max_seen, "total": first_total}}
            # reconciliation needs the whole listing read in this run, unshifted, and not empty
            complete = full and pager.done and resume is None and not shifted and any_records
            await ctx.emit(Page(config.name, records, checkpoint, deleted=self._deleted(config, records),
                                total=first_total, full_listing=full, listing_complete=complete))

    async def fetch_items(self, stream: StreamSpec, ids: Sequence[str], ctx: SyncContext) -> None:
        """GET `item_path` for each id; an id the API answers 404 for becomes a tombstone."""
        config = self.options.stream(stream.name)
        if config.item_path is None:
            await super().fetch_items(stream, ids, ctx)
            return
        for start in range(0, len(ids), FETCH_BATCH):
            found: list[Any] = []
            gone: list[str] = []
            for external_id in ids[start:start + FETCH_BATCH]:
                path = config.item_path.replace("{id}", urllib.parse.quote(external_id, safe=""))
                try:
                    body, _ = await self.client.get_json(path, limit=config.name)
                except PermanentError as exc:
                    if exc.status in (404, 410):
                        gone.append(external_id)
                        continue
                    raise
                found.append(body)
            await ctx.emit(Page(config.name, found, None, deleted=[*gone, *self._deleted(config, found)]))
