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

import dataclasses
import json
import re
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar, Union, get_args, get_origin, get_type_hints

from freshd.connectors.base import Column, ConnectionSettings, StreamSpec, column_problem
from freshd.errors import ConfigError

Scalar = str | int | float | bool
T = TypeVar("T")


class Invalid(Exception):
    """Raised by a config class's __post_init__: `key` (None: the table itself) and why."""

    def __init__(self, key: str | None, message: str) -> None:
        self.key = key
        self.message = message
        super().__init__(message)


# --- the schema machinery ----------------------------------------------------------------------


class Registry(Generic[T]):
    """Kind name -> config class: one tagged union (auth kinds, paginator kinds)."""

    def __init__(self, what: str, kinds: Mapping[str, type[T]]) -> None:
        self.what = what
        self.kinds = dict(kinds)

    def names(self) -> str:
        return ", ".join(sorted(self.kinds))

    def build(self, raw: Any, where: str) -> T:
        if isinstance(raw, str):
            kind, table = raw, {}
        elif isinstance(raw, Mapping):
            if "kind" not in raw:
                raise ConfigError(f"missing 'kind'; valid {self.what} kinds: {self.names()}", where=where)
            kind, table = raw["kind"], {k: v for k, v in raw.items() if k != "kind"}
        else:
            raise ConfigError(f"expected a {self.what} kind (one of: {self.names()}) or a table with 'kind', "
                              f"got {_describe(raw)}", where=where)
        cls = self.kinds.get(kind) if isinstance(kind, str) else None
        if cls is None:
            raise ConfigError(f"unknown {self.what} kind {kind!r}; valid kinds: {self.names()}", where=where)
        return build(cls, table, where)


def _describe(value: Any) -> str:
    kind = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}.get(type(value))
    if kind is None:
        kind = "a table" if isinstance(value, Mapping) else "an array" if isinstance(value, Sequence) \
            else type(value).__name__
    return kind


def _coerce(value: Any, hint: Any, where: str, registry: Registry[Any] | None) -> Any:
    """`value` as the type `hint` describes, or ConfigError at `where`."""
    if registry is not None:
        return registry.build(value, where)
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        members = get_args(hint)
        if value is None and type(None) in members:
            return None
        real = [m for m in members if m is not type(None)]
        if len(real) == 1:
            return _coerce(value, real[0], where, None)
        for member in real:  # a union of scalars: the first that fits as is
            if member in (str, int, float, bool) and _fits(value, member):
                return value
        names = " or ".join(_type_name(m) for m in real)
        raise ConfigError(f"expected {names}, got {_describe(value)}", where=where)
    if origin is tuple:
        item = get_args(hint)[0]
        if isinstance(value, str | bytes) or not isinstance(value, Sequence):
            raise ConfigError(f"expected an array, got {_describe(value)}", where=where)
        return tuple(_coerce(v, item, f"{where}[{i}]", None) for i, v in enumerate(value))
    if origin is not None and origin in (Mapping, dict, typing.Mapping):
        item = get_args(hint)[1]
        if not isinstance(value, Mapping):
            raise ConfigError(f"expected a table, got {_describe(value)}", where=where)
        return types.MappingProxyType({str(k): _coerce(v, item, f"{where}.{k}", None) for k, v in value.items()})
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        if not isinstance(value, Mapping):
            raise ConfigError(f"expected a table, got {_describe(value)}", where=where)
        return build(hint, value, where)
    if hint in (str, int, float, bool):
        if not _fits(value, hint):
            raise ConfigError(f"expected {_type_name(hint)}, got {_describe(value)}", where=where)
        return float(value) if hint is float else value
    raise TypeError(f"no schema for {hint!r}")  # a programming error, not a config one


def _fits(value: Any, hint: Any) -> bool:
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    return isinstance(value, hint)


def _type_name(hint: Any) -> str:
    return {str: "a string", int: "an integer", float: "a number", bool: "a boolean"}.get(hint, str(hint))


def build(cls: type[T], raw: Mapping[str, Any], where: str, *, extra: frozenset[str] = frozenset()) -> T:
    """A config dataclass from a table: unknown keys refused with the valid ones, required keys checked.

    `extra`: keys someone else reads (allowed, ignored here).
    """
    assert dataclasses.is_dataclass(cls)
    hints = get_type_hints(cls)
    known = [f for f in dataclasses.fields(cls) if f.init]
    names = {f.name for f in known}
    for key in raw:
        if key not in names and key not in extra:
            valid = ", ".join(sorted(names | extra)) or "(none)"
            raise ConfigError(f"unknown key {key!r}; valid keys: {valid}", where=f"{where}.{key}")
    kwargs: dict[str, Any] = {}
    for f in known:
        if f.name in raw:
            kwargs[f.name] = _coerce(raw[f.name], hints[f.name], f"{where}.{f.name}", f.metadata.get("registry"))
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"missing required key {f.name!r}", where=f"{where}.{f.name}")
    try:
        return cls(**kwargs)
    except Invalid as exc:
        raise ConfigError(exc.message, where=f"{where}.{exc.key}" if exc.key else where) from None


def dig(data: Any, path: str) -> Any:
    """The value at a dotted path (``data.items``, ``links.0.href``); KeyError if it is not there."""
    for part in path.split("."):
        if isinstance(data, Mapping):
            data = data[part]
        elif isinstance(data, list) and part.lstrip("-").isdigit():
            try:
                data = data[int(part)]
            except IndexError:
                raise KeyError(path) from None
        else:
            raise KeyError(path)
    return data


def _check_dotted(key: str, value: str | None) -> None:
    if value is not None and (not value or any(not part for part in value.split("."))):
        raise Invalid(key, f"{value!r} is not a dotted path (e.g. \"data.items\")")


def _check_header(key: str, value: str | None) -> None:
    if value is not None and not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", value):
        raise Invalid(key, f"{value!r} is not an HTTP header name")


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
        _check_header("header", self.header)
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


# --- paginators ----------------------------------------------------------------------------------
# The kinds' settings; their state machines are in paginators.py.


@dataclass(frozen=True, slots=True)
class PageNumberPaging:
    """``?page=N&per_page=S``.  The listing ends at the total-pages count (header or body path) when
    the API gives one, else at the first empty page, or a short one if `size_param` is sent."""

    page_param: str = "page"
    size_param: str | None = "per_page"
    size: int = 100
    start: int = 1
    total_pages_header: str | None = None
    total_pages_path: str | None = None
    total_header: str | None = None  # total records: progress, and a changed total means the pages shifted
    total_path: str | None = None

    def __post_init__(self) -> None:
        if self.size < 1:
            raise Invalid("size", "must be at least 1")
        if self.start < 0:
            raise Invalid("start", "must be 0 or more")
        for key in ("total_pages_header", "total_header"):
            _check_header(key, getattr(self, key))
        for key in ("total_pages_path", "total_path"):
            _check_dotted(key, getattr(self, key))


@dataclass(frozen=True, slots=True)
class OffsetPaging:
    """``?offset=N&limit=S``; ends at the total (header or body path) if given, else at a short page."""

    offset_param: str = "offset"
    limit_param: str = "limit"
    limit: int = 100
    total_header: str | None = None
    total_path: str | None = None

    def __post_init__(self) -> None:
        if self.limit < 1:
            raise Invalid("limit", "must be at least 1")
        _check_header("total_header", self.total_header)
        _check_dotted("total_path", self.total_path)


@dataclass(frozen=True, slots=True)
class CursorPaging:
    """The next page's token from a body path (`next_path`) or a response header (`next_header`),
    sent back as `cursor_param`; the listing ends when no token comes back."""

    cursor_param: str = "cursor"
    next_path: str | None = None
    next_header: str | None = None
    size_param: str | None = None
    size: int = 100

    def __post_init__(self) -> None:
        if (self.next_path is None) == (self.next_header is None):
            raise Invalid(None, "cursor paging needs exactly one of 'next_path' (a dotted path into the "
                                "body) or 'next_header'")
        _check_dotted("next_path", self.next_path)
        _check_header("next_header", self.next_header)
        if self.size < 1:
            raise Invalid("size", "must be at least 1")


@dataclass(frozen=True, slots=True)
class LinkHeaderPaging:
    """RFC 8288 ``Link: <url>; rel="next"``: the next URL is followed as given (same origin only)."""

    rel: str = "next"
    size_param: str | None = None
    size: int = 100

    def __post_init__(self) -> None:
        if self.size < 1:
            raise Invalid("size", "must be at least 1")


@dataclass(frozen=True, slots=True)
class NoPaging:
    """One request returns the whole listing."""


PaginatorConfig = PageNumberPaging | OffsetPaging | CursorPaging | LinkHeaderPaging | NoPaging
PAGINATORS: Registry[PaginatorConfig] = Registry("paginator", {
    "page_number": PageNumberPaging, "offset": OffsetPaging, "cursor": CursorPaging,
    "link_header": LinkHeaderPaging, "none": NoPaging,
})


def paginator_kind(config: PaginatorConfig) -> str:
    return next(name for name, cls in PAGINATORS.kinds.items() if isinstance(config, cls))


# --- streams -------------------------------------------------------------------------------------

# how the checkpointed cursor is written into `incremental_param`; any other value containing "%"
# is a strftime pattern (applied in UTC)
CURSOR_FORMATS = ("raw", "iso8601", "epoch", "epoch_ms")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,63}")


@dataclass(frozen=True, slots=True)
class SoftDelete:
    """Records whose `field` (dotted path) holds one of `values` are stored and marked deleted."""

    field: str
    values: tuple[Scalar, ...]

    def __post_init__(self) -> None:
        _check_dotted("field", self.field)
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
    soft_delete: SoftDelete | None = None
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
        _check_dotted("records_path", self.records_path)
        _check_dotted("cursor_field", self.cursor_field)
        if self.incremental_param is not None and self.cursor_field is None:
            raise Invalid("incremental_param", "needs 'cursor_field' (the records' updated-at field)")
        if self.incremental_format not in CURSOR_FORMATS and "%" not in self.incremental_format:
            raise Invalid("incremental_format", f"unknown incremental_format {self.incremental_format!r}; "
                                                f"valid: {', '.join(CURSOR_FORMATS)} or a strftime pattern")
        if self.lookback < 0:
            raise Invalid("lookback", "must be 0 or more")
        if self.cursor_ascending and self.cursor_field is None:
            raise Invalid("cursor_ascending", "needs 'cursor_field'")
        seen: dict[str, int] = {}
        for index, column in enumerate(self.view_columns):
            if column.name in seen:
                raise Invalid(f"view_columns[{index}].name",
                              f"duplicate column name {column.name!r} (also view_columns[{seen[column.name]}])")
            seen[column.name] = index

    def spec(self) -> StreamSpec:
        """What the engine sees of it."""
        return StreamSpec(self.name, self.path, primary_key=self.primary_key, cursor_field=self.cursor_field,
                          cursor_param=self.incremental_param, paginator=paginator_kind(self.paginator),
                          records_path=self.records_path,
                          params={k: param_text(v) for k, v in self.params.items()},
                          columns=tuple(column.column() for column in self.view_columns))


def param_text(value: Scalar) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


# --- the connection's options --------------------------------------------------------------------

# options the framework reads (rate limits: freshd.policies.gate; entities: the actor)
FRAMEWORK_OPTIONS = frozenset({"rate_limit", "rate_burst", "rate_limits", "rate_group", "entities"})


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
        seen: dict[str, int] = {}
        for index, stream in enumerate(self.streams):
            if stream.name in seen:
                raise Invalid(f"streams[{index}].name",
                              f"duplicate stream name {stream.name!r} (also streams[{seen[stream.name]}])")
            seen[stream.name] = index
        for name in self.headers:
            _check_header(f"headers.{name}", name)
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
