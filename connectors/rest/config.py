"""The generic REST connector's configuration: typed, declarative, checked before anything is stored.

A connection's ``options`` (TOML ``[connections.options]`` or the JSON given to
``freshctl connections add``) are read into frozen dataclasses:

    RestOptions         auth, headers, streams (+ the framework's rate-limit and entity keys)
    ├── auth            a tagged union, registry AUTH_KINDS: none | bearer | basic | api_key | oauth2_refresh
    └── streams[]       RestStream: name, path, records_path, primary_key, params, incremental fields
        ├── paginator   a tagged union, registry PAGINATORS: page_number | offset | cursor | link_header | none
        ├── soft_delete optional SoftDelete: records whose `field` is one of `values` are tombstones
        └── view_columns[] RestColumn: name, path, type: the typed columns of the stream's view

Each dataclass is its own schema: `build` reads a table field by field from the
type hints, refuses unknown keys (listing the valid ones), and turns a problem
into ConfigError whose `where` names the option (``options.streams[1].paginator``),
so config load and ``connections add`` reject bad input before anything is stored.
A tagged union is written either as its kind alone (``paginator = "link_header"``)
or as a table with ``kind`` and the kind's own keys.  Cross-field rules live in
each class's ``__post_init__`` (raise `Invalid`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from freshd.connectors.base import FRAMEWORK_OPTIONS, Column, ConnectionSettings, StreamSpec, column_problem
from freshd.connectors.paginators import PAGINATORS, PaginatorConfig
from freshd.connectors.schema import Invalid, Registry, build, check_dotted, check_header, check_unique, dig  # noqa: F401 - dig: re-exported
from freshd.connectors.streams import CURSOR_FORMATS, Incremental, Listing, SoftDelete
from freshd.errors import ConfigError

Scalar = str | int | float | bool

# --- auth --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NoAuth:
    """No credentials: a public API."""

    credentials: ClassVar[tuple[str, ...]] = ()


@dataclass(frozen=True, slots=True)
class BearerAuth:
    """A static token: ``Authorization: Bearer <credentials.token>``."""

    credentials: ClassVar[tuple[str, ...]] = ("token",)


@dataclass(frozen=True, slots=True)
class BasicAuth:
    """HTTP Basic with credentials.username / credentials.password."""

    credentials: ClassVar[tuple[str, ...]] = ("username", "password")


@dataclass(frozen=True, slots=True)
class ApiKeyAuth:
    """credentials.api_key in a header (`header`) or in the query string (`param`): exactly one."""

    header: str | None = None
    param: str | None = None
    credentials: ClassVar[tuple[str, ...]] = ("api_key",)

    def __post_init__(self) -> None:
        if (self.header is None) == (self.param is None):
            raise Invalid(None, "api_key auth needs exactly one of 'header' (e.g. \"X-API-Key\") or "
                                "'param' (e.g. \"api_key\")")
        check_header("header", self.header)
        if self.param is not None and not self.param:
            raise Invalid("param", "must not be empty")


@dataclass(frozen=True, slots=True)
class OAuth2RefreshAuth:
    """OAuth 2 refresh-token grant (RFC 6749 §6) at `token_url`; the access token goes in as Bearer.

    `client_auth`: where client_id/client_secret go, ``body`` (form fields) or ``basic`` (RFC 6749 §2.3.1).
    """

    token_url: str
    scope: str | None = None
    client_auth: str = "body"
    credentials: ClassVar[tuple[str, ...]] = ("client_id", "client_secret", "refresh_token")

    def __post_init__(self) -> None:
        if not self.token_url:
            raise Invalid("token_url", "must not be empty")
        if self.client_auth not in ("body", "basic"):
            raise Invalid("client_auth", f"unknown client_auth {self.client_auth!r}; valid: basic, body")


AuthConfig = NoAuth | BearerAuth | BasicAuth | ApiKeyAuth | OAuth2RefreshAuth
AUTH_KINDS: Registry[AuthConfig] = Registry("auth", {
    "none": NoAuth, "bearer": BearerAuth, "basic": BasicAuth, "api_key": ApiKeyAuth,
    "oauth2_refresh": OAuth2RefreshAuth,
})


# --- streams -------------------------------------------------------------------------------------

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,63}")


@dataclass(frozen=True, slots=True)
class RestSoftDelete:
    """Records whose `field` (dotted path) holds one of `values` are stored and marked deleted."""

    field: str
    values: tuple[Scalar, ...]

    def __post_init__(self) -> None:
        check_dotted("field", self.field)
        if not self.values:
            raise Invalid("values", "needs at least one value")


@dataclass(frozen=True, slots=True)
class RestColumn:
    """A column of the stream's view (docs/DATA.md): `path` (dotted, default: the name) read as `type`."""

    name: str
    path: str | None = None
    type: str = "text"

    def __post_init__(self) -> None:
        if problem := column_problem(self.name, self.path or self.name, self.type):
            raise Invalid(*problem)

    def column(self) -> Column:
        return Column(self.name, self.path or self.name, self.type)


@dataclass(frozen=True, slots=True)
class RestStream:
    """One table of ``options.streams``: where the records are and how to page and filter them."""

    name: str
    path: str
    paginator: PaginatorConfig = field(metadata={"registry": PAGINATORS})
    primary_key: str = "id"
    records_path: str | None = None  # dotted path to the list in the body; None: the body is the list
    params: Mapping[str, Scalar] = field(default_factory=dict)
    cursor_field: str | None = None  # the records' updated-at (dotted path)
    incremental_param: str | None = None  # the server-side filter it is sent as, e.g. modified_after
    incremental_format: str = "raw"
    lookback: float = 0.0  # seconds (or the cursor's own units if it is a number) re-read each time
    cursor_ascending: bool = False  # the listing returns records by cursor_field ascending
    soft_delete: RestSoftDelete | None = None
    item_path: str | None = None  # "customers/{id}": one record by id (freshctl retry)
    # the stream's view (StreamSpec.columns); not `columns`, so that the valid keys an error lists
    # still start with the cursor keys
    view_columns: tuple[RestColumn, ...] = ()

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.name):
            raise Invalid("name", f"bad stream name {self.name!r}: letters, digits, '_', '.', '-' (max 64)")
        for key in ("path", "item_path"):
            value = getattr(self, key)
            if value is not None and (not value or re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:|^//", value)):
                raise Invalid(key, "must be a non-empty path relative to base_url (credentials go to "
                                   "base_url's host only)")
        if self.item_path is not None and "{id}" not in self.item_path:
            raise Invalid("item_path", "must contain {id}")
        if not self.primary_key or "." in self.primary_key:
            raise Invalid("primary_key", "must be a top-level field of the records")
        check_dotted("records_path", self.records_path)
        check_dotted("cursor_field", self.cursor_field)
        if self.incremental_param is not None and self.cursor_field is None:
            raise Invalid("incremental_param", "needs 'cursor_field' (the records' updated-at field)")
        if self.incremental_format not in CURSOR_FORMATS and "%" not in self.incremental_format:
            raise Invalid("incremental_format", f"unknown incremental_format {self.incremental_format!r}; "
                                                f"valid: {', '.join(CURSOR_FORMATS)} or a strftime pattern")
        if self.lookback < 0:
            raise Invalid("lookback", "must be 0 or more")
        if self.cursor_ascending and self.cursor_field is None:
            raise Invalid("cursor_ascending", "needs 'cursor_field'")
        check_unique("view_columns", "column", [column.name for column in self.view_columns])

    def spec(self, page_concurrency: int = 1) -> StreamSpec:
        """What the engine sees of it: the stream declared as data for the listing engine."""
        incremental = None if self.cursor_field is None else Incremental(
            self.cursor_field, self.incremental_param, self.incremental_format, self.lookback,
            ascending=self.cursor_ascending)
        soft_delete = None if self.soft_delete is None else SoftDelete(self.soft_delete.field, self.soft_delete.values)
        return StreamSpec(self.name, self.path, primary_key=self.primary_key, cursor_field=self.cursor_field,
                          cursor_param=self.incremental_param,
                          params={k: param_text(v) for k, v in self.params.items()},
                          columns=tuple(column.column() for column in self.view_columns),
                          listing=Listing(self.paginator, self.records_path, incremental, soft_delete,
                                          concurrency=page_concurrency))


def param_text(value: Scalar) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


# --- the connection's options --------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class RestOptions:
    streams: tuple[RestStream, ...]
    auth: AuthConfig = field(default=NoAuth(), metadata={"registry": AUTH_KINDS})
    headers: Mapping[str, str] = field(default_factory=dict)  # sent with every request
    timeout: float = 30.0
    page_concurrency: int = 2  # pages the engine buffers ahead of the writer; 1: lockstep

    def __post_init__(self) -> None:
        if self.page_concurrency < 1:
            raise Invalid("page_concurrency", "must be at least 1")
        if not self.streams:
            raise Invalid("streams", "needs at least one stream")
        check_unique("streams", "stream", [stream.name for stream in self.streams])
        for name in self.headers:
            check_header(f"headers.{name}", name)
        if self.timeout <= 0:
            raise Invalid("timeout", "must be above zero")

    def stream(self, name: str) -> RestStream:
        for stream in self.streams:
            if stream.name == name:
                return stream
        raise KeyError(name)


def parse_options(options: Mapping[str, Any]) -> RestOptions:
    """The options alone as RestOptions (read_options also checks the URL and the credentials)."""
    raw = dict(options)
    for key in ("streams", "auth", "headers"):
        # `freshctl connections add --option KEY=VALUE` gives strings: tables come as JSON text
        value = raw.get(key)
        if isinstance(value, str) and value.lstrip()[:1] in ("[", "{"):
            try:
                raw[key] = json.loads(value)
            except ValueError as exc:
                raise ConfigError(f"not valid JSON: {exc}", where=f"options.{key}") from None
    return build(RestOptions, raw, "options", extra=FRAMEWORK_OPTIONS)


def read_options(settings: ConnectionSettings) -> RestOptions:
    """The connection's options as RestOptions, and its credentials checked against the auth kind.

    Raises ConfigError naming the option (``options.streams[1].paginator``) or credential; never
    quotes a credential's value.
    """
    if not re.match(r"^https?://[^/?#]+", settings.base_url or ""):
        raise ConfigError(f"expected an http(s) URL, got {settings.base_url!r}", where="base_url")
    options = parse_options(settings.options)
    creds = settings.credentials
    # an empty Basic password is legal (some APIs take the key as the user name); it must be given
    empty_ok = {"password"} if isinstance(options.auth, BasicAuth) else set()
    missing = [key for key in options.auth.credentials
               if key not in creds or (not creds[key] and key not in empty_ok)]
    if missing:
        kind = next(name for name, cls in AUTH_KINDS.kinds.items() if isinstance(options.auth, cls))
        raise ConfigError(f"{kind} auth needs credential(s): {', '.join(missing)}",
                          where=f"credentials.{missing[0]}")
    return options
