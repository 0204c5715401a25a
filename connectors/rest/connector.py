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

import time
import urllib.parse
from collections.abc import Generator, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import httpx
import structlog

from freshd.connectors.base import ConnectionSettings, Connector, SyncContext, SyncMode
from freshd.connectors.errors import ErrorTable, classify_with
from freshd.connectors.http import Classify, ProviderClient, bearer
from freshd.connectors.listing import fetch_by_id, run_listing
from freshd.connectors.pagination import LoopGuard
from freshd.connectors.paginators import start_pager
from freshd.connectors.rest.config import (
    ApiKeyAuth,
    BasicAuth,
    BearerAuth,
    OAuth2RefreshAuth,
    RestOptions,
    param_text,
    parse_options,
    read_options,
)
from freshd.connectors.streams import StreamSpec
from freshd.errors import (
    PermanentError,
)
from freshd.policies.gate import ConnectionPolicies
from freshd.policies.tokens import Token

FETCH_BATCH = 100  # records per page when fetching by id

log = structlog.get_logger(__name__)

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
        params = {k: param_text(v) for k, v in stream.params.items()}
        await self.client.get_json(stream.path, params={**params, **pager.ask().params},
                                   limit=stream.name)

    async def sync_entity(
        self, stream: StreamSpec, state: dict[str, Any] | None, mode: SyncMode, ctx: SyncContext
    ) -> None:
        await run_listing(self.stream(stream.name), state, mode, ctx, self.client, limit=stream.name,
                          origin=self.origin)

    async def fetch_items(self, stream: StreamSpec, ids: Sequence[str], ctx: SyncContext) -> None:
        """GET `item_path` for each id; an id the API answers 404 for becomes a tombstone."""
        config, spec = self.options.stream(stream.name), self.stream(stream.name)
        if config.item_path is None:
            await super().fetch_items(stream, ids, ctx)
            return
        await fetch_by_id(spec, ids, ctx, self.client, item_path=config.item_path, limit=config.name)
