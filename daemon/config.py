"""The configuration: one TOML file plus a few environment variables -> a frozen `Config`.

    load_config(path, env)   read, validate, return a new Config (or raise ConfigError)

Policy:

* The file is read whole, validated whole, and only then turned into a `Config`; any error
  raises `ConfigError` and nothing is applied (a SIGHUP with a broken file keeps the running
  configuration).  An empty file is valid: every default, no connections.
* Errors name the key path (``connections[2].base_url``; connection indexes count from 0) and,
  when the key can be found in the text, the file and line:
  ``/etc/freshd/freshd.toml:23: connections[2].base_url: ...``.  Unknown keys are errors, with
  a "did you mean" suggestion.
* Durations are written ``"90s"``, ``"15m"``, ``"2h"``, ``"1d"``, ``"1h30m"`` (also ``ms``, ``w``)
  or as a plain integer number of seconds; they are stored as float seconds everywhere.
* Environment variables override the file and are validated the same way:
  FRESHD_DATABASE_URL, FRESHD_SOCKET, FRESHD_STATE_DIR, FRESHD_RUNTIME_DIR,
  FRESHD_METRICS_ADDRESS, FRESHD_HTTP_ADDRESS, FRESHD_LOG_LEVEL, FRESHD_LOG_FORMAT, FRESHD_MEMBER_NAME.
  An empty variable counts as unset, except FRESHD_METRICS_ADDRESS where "" disables the metrics endpoint.
* Secrets (credential values, a password in ``database_url``) never appear in ``repr()``;
  `Config.secret_values()` lists them for the log redactor.

`config/freshd.toml` is the documented example with every key and its default.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, time
from pathlib import Path
from typing import Any, NoReturn, TypeVar
from urllib.parse import urlsplit

from freshd import paths
from freshd.addresses import split_host_port
from freshd.errors import ConfigError, ConfigErrors
from freshd.policies.breaker import BreakerSettings
from freshd.policies.limits import ProviderLimits
from freshd.policies.retry import RetryPolicy

__all__ = [
    "DEFAULT_PROVIDERS",
    "LOG_FORMATS",
    "LOG_LEVELS",
    "AdminConfig",
    "Config",
    "ConnectionConfig",
    "FrozenDict",
    "LogConfig",
    "MetricsConfig",
    "ScheduleConfig",
    "StalenessConfig",
    "SyncConfig",
    "load_config",
    "parse_duration",
    "split_host_port",
]

DEFAULT_PROVIDERS: tuple[str, ...] = ("woocommerce", "odoo", "orion", "amazon_sp", "powens", "rest")
LOG_LEVELS: tuple[str, ...] = ("debug", "info", "warning", "error", "critical")
LOG_FORMATS: tuple[str, ...] = ("auto", "json", "console")

_K = TypeVar("_K")
_V = TypeVar("_V")


# -- values --------------------------------------------------------------------------------------------


class FrozenDict(dict[_K, _V]):
    """A read-only, hashable dict (nested values frozen too), so `Config` can be hashed.

    It is still a `dict`, so ``json.dumps``/``orjson`` and ``dict(x)`` treat it as one.
    """

    __slots__ = ()

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(frozenset(self.items()))

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (dict(self),))

    def _readonly(self, *args: object, **kwargs: object) -> NoReturn:
        raise TypeError(f"{type(self).__name__} is read-only")

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = __ior__ = _readonly


class Credentials(FrozenDict[str, str]):
    """Credential values: shown as ``{'consumer_key': '[redacted]'}`` by repr() and str()."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "{" + ", ".join(f"{key!r}: '[redacted]'" for key in self) + "}"

    __str__ = __repr__


# -- the configuration ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TenantAccess:
    """Unix users and groups who may see and act on one tenant's connections and jobs."""

    users: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()


ADMIN_RESERVED_CONNECTIONS = 4  # admin seats only root and the daemon's uid may take: `status` always gets in


@dataclass(frozen=True, slots=True)
class AdminConfig:
    socket: Path = field(default_factory=paths.default_socket_path)
    socket_mode: int = 0o660  # written as the octal string "0660"
    group: str | None = None  # the socket's group (None: the daemon's primary group)
    request_timeout: float = 30.0
    idle_timeout: float = 60.0  # a client with no complete request line for this long is closed
    max_connections: int = 64
    max_connections_per_uid: int = 16  # root and the daemon's uid are not capped (and have reserved seats)
    # [admin.tenants.NAME] users = [...], groups = [...]: tenant-scoped callers
    tenants: FrozenDict[str, TenantAccess] = field(default_factory=FrozenDict)


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    address: str = "127.0.0.1:9464"  # host:port; "" disables
    enabled: bool = True  # False when disabled by `enabled = false` or an empty address
    per_connection: bool = False  # gauges labelled by connection name: one series per connection, opt-in


@dataclass(frozen=True, slots=True)
class HttpConfig:
    """The HTTP API for web applications (docs/HTTP.md): off unless given an address."""

    address: str = ""  # host:port; "" (the default): no HTTP API
    max_body_bytes: int = 65536  # a larger request body gets 413 unread

    @property
    def enabled(self) -> bool:
        return bool(self.address)


@dataclass(frozen=True, slots=True)
class LogConfig:
    level: str = "info"  # one of LOG_LEVELS
    format: str = "auto"  # one of LOG_FORMATS


@dataclass(frozen=True, slots=True)
class ScheduleConfig:
    sync_interval: float = 2 * 3600.0
    health_interval: float = 15 * 60.0
    token_interval: float = 3600.0
    cleanup_cron: str = "0 2 * * *"
    scheduled_sync: bool = True
    jitter: float = 60.0


@dataclass(frozen=True, slots=True)
class StalenessConfig:
    fresh_below: float = 2 * 3600.0
    stale_after: float = 4 * 3600.0
    min_gap: float = 5 * 60.0


@dataclass(frozen=True, slots=True)
class SyncConfig:
    page_concurrency: int = 4
    db_threads: int = 4
    job_history: int = 10  # jobs kept per connection
    job_max_age: float = 30 * 86400.0
    max_running: int = 20  # syncs running at once in this daemon
    tenant_max_running: int = 5  # ... and per tenant
    # a reconciliation deleting more than this share of an entity is held until confirmed
    max_delete_share: float = 0.10
    stats_retention_days: int = 90  # daily statistics kept this many days


@dataclass(frozen=True, slots=True)
class EventsConfig:
    # change events to Redis Streams (docs/EVENTS.md); off without a Redis URL
    redis_url: str | None = None
    stream: str = "freshd:{tenant}:{entity}"  # where live events go
    history_stream: str = "freshd:{tenant}:{entity}:history:{app}"  # an application's backfill
    jobs_stream: str = "freshd:{tenant}:jobs"  # job lifecycle and progress
    maxlen: int = 0  # approximate MAXLEN trimming on XADD; 0: never trim
    payload: str = "full"  # "full": the record in every event; "thin": ids and versions only
    retention: float = 86400.0  # published outbox rows are kept this long


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    # several daemons on one database (docs/SCALE-OUT.md); one daemon is a cluster of one
    member_name: str | None = None  # stable across restarts; default: this host and the admin socket path
    lease_ttl: float = 10.0  # a connection's owner must renew within this; failover takes about this long
    handover: float = 10.0  # a member that joined is handed its share once up this long


@dataclass(frozen=True, slots=True)
class StoreConfig:
    # server-side bounds on every store statement and lock wait (PostgreSQL statement_timeout,
    # lock_timeout): a database hanging on a lock cannot hold a sync, an admin request or shutdown
    statement_timeout: float = 30.0
    lock_timeout: float = 30.0


@dataclass(frozen=True, slots=True)
class SecretsConfig:
    # newest first: the first key seals, every key opens (rotation: put the new file in front)
    key_files: tuple[Path, ...] = ()
    credential: str | None = None  # a systemd credential name (LoadCredential=), read from $CREDENTIALS_DIRECTORY


@dataclass(frozen=True, slots=True)
class RateGroupConfig:
    rate: str  # "10/min"
    burst: float = 1.0


@dataclass(frozen=True, slots=True)
class PoliciesConfig:
    breaker: BreakerSettings = field(default_factory=BreakerSettings)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    token_refresh_buffer: float = 600.0
    rate_groups: FrozenDict[str, RateGroupConfig] = field(default_factory=FrozenDict)
    limits: ProviderLimits = field(default_factory=ProviderLimits)


@dataclass(frozen=True, slots=True)
class ConnectionConfig:
    name: str
    provider: str
    base_url: str
    tenant: str = "default"
    credentials: Credentials = field(default_factory=Credentials, repr=False)
    options: FrozenDict[str, Any] = field(default_factory=FrozenDict)
    enabled: bool = True  # false: stopped, its stored data kept (resumes from its cursors when true again)
    purge: bool = False  # with enabled = false: delete its stored data (records, cursors, jobs) on load


@dataclass(frozen=True, slots=True)
class Config:
    database_url: str | None = field(default=None, repr=False)  # None: embedded PostgreSQL
    state_dir: Path = field(default_factory=paths.default_state_dir)
    runtime_dir: Path = field(default_factory=paths.default_runtime_dir)
    admin: AdminConfig = field(default_factory=AdminConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    log: LogConfig = field(default_factory=LogConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    staleness: StalenessConfig = field(default_factory=StalenessConfig)
    sync: SyncConfig = field(default_factory=SyncConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    events: EventsConfig = field(default_factory=EventsConfig)
    secrets: SecretsConfig = field(default_factory=SecretsConfig)
    policies: PoliciesConfig = field(default_factory=PoliciesConfig)
    connections: tuple[ConnectionConfig, ...] = ()
    source: Path | None = None  # the file it was read from (None: defaults only)

    def connection(self, name: str) -> ConnectionConfig | None:
        return next((c for c in self.connections if c.name == name), None)

    def secret_values(self) -> frozenset[str]:
        """Every secret string in the configuration, for `freshd.logs.register_secret`."""
        found = {value for c in self.connections for value in c.credentials.values() if value}
        if self.database_url and (password := _url_password(self.database_url)):
            found.add(password)
        return frozenset(found)


def _url_password(url: str) -> str | None:
    if "://" in url:
        try:
            return urlsplit(url).password
        except ValueError:
            return None
    match = re.search(r"(?:^|\s)password\s*=\s*('(?:[^'\\]|\\.)*'|\S+)", url)
    return match.group(1).strip("'") if match else None


# -- parsing helpers -----------------------------------------------------------------------------------

_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_DURATION = re.compile(rf"(?:{_DURATION_PART.pattern})+")


def parse_duration(value: object) -> float:
    """``"90s"``, ``"15m"``, ``"1h30m"``, ``"1d"``, or an integer of seconds -> float seconds.

    Raises ValueError (negative, empty, unknown unit, wrong type).
    """
    if isinstance(value, bool):
        raise ValueError(f"expected a duration like \"90s\" or \"2h\", got {_describe(value)}")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"a duration cannot be negative, got {value!r}")
        return float(value)
    if not isinstance(value, str):
        raise ValueError(f"expected a duration like \"90s\" or \"2h\", got {_describe(value)}")
    text = value.strip().lower()
    if text.isdigit():
        return float(text)
    if not _DURATION.fullmatch(text):
        raise ValueError(
            f"bad duration {value!r}: use a number with a unit (ms, s, m, h, d, w), e.g. \"90s\", \"1h30m\""
        )
    return sum(float(number) * _DURATION_UNITS[unit] for number, unit in _DURATION_PART.findall(text))


def _describe(value: object, *, show: bool = True) -> str:
    kind = {
        bool: "a boolean", int: "an integer", float: "a float", str: "a string",
        dict: "a table", list: "an array",
    }.get(type(value))
    if kind is None:
        kind = "a date/time" if isinstance(value, datetime | date | time) else type(value).__name__
    if not show:
        return kind
    text = repr(value)
    return f"{kind} ({text if len(text) <= 40 else text[:37] + '...'})"


def _suggest(key: str, known: Collection[str]) -> str:
    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
    if close:
        return f"did you mean {close[0]!r}?"
    return "expected one of: " + ", ".join(sorted(known))


# -- where keys are in the text ------------------------------------------------------------------------

_BARE = r"[A-Za-z0-9_-]+"
_QUOTED = r"\"(?:[^\"\\]|\\.)*\"|'[^']*'"
_KEY = rf"(?:{_BARE}|{_QUOTED})"
_DOTTED = rf"{_KEY}(?:\s*\.\s*{_KEY})*"
_ARRAY_HEADER = re.compile(rf"^\s*\[\[\s*({_DOTTED})\s*\]\]")
_TABLE_HEADER = re.compile(rf"^\s*\[\s*({_DOTTED})\s*\]")
_ASSIGNMENT = re.compile(rf"^\s*({_DOTTED})\s*=")
_INLINE_PAIR = re.compile(rf"[{{,]\s*({_KEY})\s*=")


def _split_dotted(text: str) -> list[str]:
    return [part.strip('"').strip("'") for part in re.findall(_KEY, text)]


def _key_lines(text: str) -> dict[str, int]:
    """Best effort: key path (``admin.socket``, ``connections[1].credentials.x``) -> line number.

    A scan of the lines, not a parser: table headers, arrays of tables (counted), ``key =``
    lines and one level of inline tables.  Lines inside multi-line strings are skipped.
    """
    lines: dict[str, int] = {}
    array_counts: dict[str, int] = {}
    table: list[str] = []
    in_string: str | None = None

    def resolve(parts: list[str]) -> str:
        # `[connections.options]` after `[[connections]]` is the latest connection's table
        path = ""
        for part in parts:
            path = f"{path}.{part}" if path else part
            if path in array_counts:
                path = f"{path}[{array_counts[path] - 1}]"
        return path

    for number, line in enumerate(text.splitlines(), start=1):
        if in_string is not None:
            if line.count(in_string) % 2 == 1:
                in_string = None
            continue
        if match := _ARRAY_HEADER.match(line):
            parts = _split_dotted(match.group(1))
            parent = resolve(parts[:-1])
            raw = f"{parent}.{parts[-1]}" if parent else parts[-1]
            array_counts[raw] = array_counts.get(raw, 0) + 1
            table = [f"{raw}[{array_counts[raw] - 1}]"]
            lines.setdefault(table[0], number)
            lines.setdefault(raw, number)
        elif match := _TABLE_HEADER.match(line):
            table = [resolve(_split_dotted(match.group(1)))]
            lines.setdefault(table[0], number)
        elif match := _ASSIGNMENT.match(line):
            path = ".".join([*table, *_split_dotted(match.group(1))])
            lines.setdefault(path, number)
            rest = line[match.end():]
            for inner in _INLINE_PAIR.finditer(rest):
                lines.setdefault(f"{path}.{_split_dotted(inner.group(1))[0]}", number)
            for quote in ('"""', "'''"):
                if rest.count(quote) % 2 == 1:
                    in_string = quote
    return lines


class _Where:
    """Turns a key path into ``file:line: key`` for error messages."""

    def __init__(self, source: Path | None, text: str) -> None:
        self.source = source
        self.lines = _key_lines(text) if text else {}

    def __call__(self, key: str) -> str:
        probe = key
        while probe:
            if (line := self.lines.get(probe)) is not None:
                return f"{self.source}:{line}: {key}" if self.source else f"line {line}: {key}"
            probe = re.sub(r"(\.[^.\[]+|\[\d+\])$", "", probe) if re.search(r"[.\[]", probe) else ""
        return f"{self.source}: {key}" if self.source else key


class _Reader:
    """Reads one table, recording which keys were used; unknown keys are errors."""

    def __init__(self, data: Mapping[str, Any], prefix: str, where: _Where) -> None:
        self.data = data
        self.prefix = prefix
        self.where = where

    def path(self, key: str) -> str:
        return f"{self.prefix}.{key}" if self.prefix else key

    def fail(self, key: str, message: str) -> NoReturn:
        raise ConfigError(message, where=self.where(self.path(key)))

    def check_keys(self, known: Collection[str]) -> None:
        for key in self.data:
            if key not in known:
                self.fail(key, f"unknown key {key!r}; {_suggest(key, known)}")

    def has(self, key: str) -> bool:
        return key in self.data

    def _typed(self, key: str, kind: type | tuple[type, ...], name: str, default: Any) -> Any:
        if key not in self.data:
            return default
        value = self.data[key]
        if isinstance(value, bool) and kind is not bool:
            self.fail(key, f"expected {name}, got {_describe(value)}")
        if not isinstance(value, kind):
            self.fail(key, f"expected {name}, got {_describe(value)}")
        return value

    def string(self, key: str, default: str | None, *, empty: bool = False) -> Any:
        value = self._typed(key, str, "a string", default)
        if isinstance(value, str) and not value and not empty and key in self.data:
            self.fail(key, "must not be empty")
        return value

    def boolean(self, key: str, default: bool) -> bool:
        return bool(self._typed(key, bool, "a boolean (true or false)", default))

    def integer(self, key: str, default: int, *, minimum: int) -> int:
        value: int = self._typed(key, int, "an integer", default)
        if value < minimum:
            self.fail(key, f"must be at least {minimum}, got {value}")
        return value

    def duration(self, key: str, default: float, *, positive: bool = True) -> float:
        if key not in self.data:
            return default
        try:
            seconds = parse_duration(self.data[key])
        except ValueError as exc:
            self.fail(key, str(exc))
        if positive and seconds <= 0:
            self.fail(key, f"must be longer than zero, got {self.data[key]!r}")
        return seconds

    def table(self, key: str) -> _Reader:
        value = self._typed(key, dict, "a table", {})
        return _Reader(value, self.path(key), self.where)

    def choice(self, key: str, default: str, choices: Collection[str]) -> str:
        value: str = self.string(key, default)
        normalized = value.strip().lower()
        if normalized not in choices:
            self.fail(key, f"unknown value {value!r}; {_suggest(normalized, choices)}")
        return normalized


def _share(table: _Reader, key: str, default: float) -> float:
    value = float(table._typed(key, (int, float), "a number between 0 and 1", default))
    if not 0 <= value <= 1:
        table.fail(key, f"must be between 0 and 1 (a share: 0.1 is 10 %), got {value:g}")
    return value


def _string_list(reader: _Reader, key: str) -> tuple[str, ...]:
    value = reader._typed(key, list, "a list of strings", [])
    if not all(isinstance(item, str) and item for item in value):
        reader.fail(key, "expected a list of non-empty strings")
    return tuple(value)


# -- sections ------------------------------------------------------------------------------------------

_TOP_KEYS = (
    "database_url", "state_dir", "runtime_dir", "admin", "metrics", "http", "log", "schedule", "staleness",
    "sync", "store", "secrets", "policies", "connections", "cluster", "events",
)
_METRICS, _SCHEDULE, _STALENESS, _SYNC = MetricsConfig(), ScheduleConfig(), StalenessConfig(), SyncConfig()
_STORE = StoreConfig()
_CLUSTER = ClusterConfig()
_EVENTS = EventsConfig()
_CONNECTION_KEYS = ("name", "provider", "base_url", "tenant", "credentials", "options", "enabled", "purge")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def _check_database_url(url: str) -> str | None:
    """None if fine, else why not. Accepts postgresql:// URLs and libpq ``key=value`` strings."""
    if "://" in url:
        try:
            parts = urlsplit(url)
        except ValueError as exc:
            return f"not a valid URL: {exc}"
        if parts.scheme not in ("postgresql", "postgres"):
            return f"expected a postgresql:// URL, got scheme {parts.scheme!r}"
        return None
    if "=" not in url:
        return "expected a postgresql:// URL or a libpq string like \"host=... dbname=...\""
    return None


def _check_http_url(url: str) -> str | None:
    if url != url.strip() or any(ch.isspace() for ch in url):
        return f"must not contain whitespace: {url!r}"
    try:
        parts = urlsplit(url)
        port = parts.port  # raises on a bad port
    except ValueError as exc:
        return f"not a valid URL ({exc}): {url!r}"
    if parts.scheme not in ("http", "https"):
        return f"expected an http:// or https:// URL, got {url!r}"
    if not parts.hostname:
        return f"the URL has no host: {url!r}"
    del port
    return None


def _socket_mode(reader: _Reader, key: str) -> int:
    if not reader.has(key):
        return 0o660
    value = reader.data[key]
    if not isinstance(value, str):
        reader.fail(key, f"expected an octal string like \"0660\", got {_describe(value)}")
    text = value.strip().lower().removeprefix("0o")
    if not re.fullmatch(r"[0-7]{3,4}", text) or int(text, 8) > 0o777:
        reader.fail(key, f"expected permission bits as an octal string like \"0660\", got {value!r}")
    return int(text, 8)


def _freeze(value: Any, reader: _Reader, key: str) -> Any:
    if isinstance(value, dict):
        return FrozenDict({k: _freeze(v, reader, f"{key}.{k}") for k, v in value.items()})
    if isinstance(value, list):
        return tuple(_freeze(v, reader, f"{key}[{i}]") for i, v in enumerate(value))
    if isinstance(value, datetime | date | time):
        reader.fail(key, "dates and times are not supported in options; write them as strings")
    return value


def _connection(reader: _Reader, providers: Collection[str]) -> ConnectionConfig:
    reader.check_keys(_CONNECTION_KEYS)
    for required in ("name", "provider", "base_url"):
        if not reader.has(required):
            reader.fail(required, f"missing required key {required!r}")
    name: str = reader.string("name", None)
    if not _NAME.fullmatch(name):
        reader.fail("name", f"bad connection name {name!r}: use up to 64 letters, digits, '.', '_' and '-'")
    provider: str = reader.string("provider", None)
    if provider not in providers:
        reader.fail("provider", f"unknown provider {provider!r}; {_suggest(provider, providers)}")
    base_url: str = reader.string("base_url", None)
    if (problem := _check_http_url(base_url)) is not None:
        reader.fail("base_url", problem)
    tenant: str = reader.string("tenant", "default")
    creds = reader.table("credentials")
    for key, value in creds.data.items():
        if not isinstance(value, str):
            creds.fail(key, f"credential values must be strings, got {_describe(value, show=False)}")
    options = reader.table("options")
    spec = ConnectionConfig(
        name=name,
        provider=provider,
        base_url=base_url,
        tenant=tenant,
        credentials=Credentials(creds.data),
        options=_freeze(options.data, reader, "options"),
        enabled=reader.boolean("enabled", True),
        purge=reader.boolean("purge", False),
    )
    if spec.purge and spec.enabled:
        reader.fail("purge", "purge = true deletes the connection's stored data (records, cursors, jobs); "
                             "it needs enabled = false on the same entry")
    if provider in DEFAULT_PROVIDERS:
        # the provider's own checks (option kinds, rate limits): imported late, only for providers in use
        from freshd.connectors.base import ConnectionSettings, check_settings

        try:
            check_settings(ConnectionSettings(name, provider, base_url, tenant, dict(spec.credentials),
                                              dict(options.data)))
        except ConfigErrors as exc:  # every problem, each at its key, in one line
            raise ConfigErrors([_located(reader, e) for e in exc.errors]) from None
        except ConfigError as exc:
            raise _located(reader, exc) from None
    return spec


def _located(reader: _Reader, exc: ConfigError) -> ConfigError:
    """A provider's check, re-raised at the connection's key in the file (``file:line`` when found)."""
    return ConfigError(str(exc).removeprefix(f"{exc.where}: ") if exc.where else str(exc),
                       where=reader.where(reader.path(exc.where or "options")))


def _connections(top: _Reader, providers: Collection[str]) -> tuple[ConnectionConfig, ...]:
    if not top.has("connections"):
        return ()
    raw = top.data["connections"]
    if not isinstance(raw, list):
        top.fail("connections", f"expected an array of tables ([[connections]]), got {_describe(raw)}")
    result: list[ConnectionConfig] = []
    seen: dict[str, int] = {}
    for index, item in enumerate(raw):
        prefix = f"connections[{index}]"
        if not isinstance(item, dict):
            raise ConfigError(f"expected a table, got {_describe(item)}", where=top.where(prefix))
        spec = _connection(_Reader(item, prefix, top.where), providers)
        if spec.name in seen:
            raise ConfigError(
                f"duplicate connection name {spec.name!r} (also connections[{seen[spec.name]}])",
                where=top.where(f"{prefix}.name"),
            )
        seen[spec.name] = index
        result.append(spec)
    return tuple(result)


def _check_cron(reader: _Reader, key: str, default: str) -> str:
    expr: str = reader.string(key, default)
    # the scheduler's own reading of crontab syntax (imported late: it pulls in APScheduler)
    from freshd.scheduler import cron_trigger

    try:
        cron_trigger(expr)
    except ValueError as exc:
        reader.fail(key, f"invalid cron expression {expr!r}: {exc}")
    return expr


def _build(data: Mapping[str, Any], where: _Where, env: Mapping[str, str],
           providers: Collection[str], source: Path | None) -> Config:
    top = _Reader(data, "", where)
    top.check_keys(_TOP_KEYS)

    database_url: str | None = top.string("database_url", None)
    if database_url is not None and (problem := _check_database_url(database_url)) is not None:
        top.fail("database_url", problem)
    state_dir = Path(top.string("state_dir", str(paths.default_state_dir(env))))
    runtime_dir = Path(top.string("runtime_dir", str(paths.default_runtime_dir(env))))

    admin = top.table("admin")
    admin.check_keys(("socket", "socket_mode", "group", "request_timeout", "idle_timeout", "max_connections",
                      "max_connections_per_uid", "tenants"))
    tenants_table = admin.table("tenants")
    tenants: dict[str, TenantAccess] = {}
    for tenant in tenants_table.data:
        access = tenants_table.table(tenant)
        access.check_keys(("users", "groups"))
        tenants[tenant] = TenantAccess(users=_string_list(access, "users"), groups=_string_list(access, "groups"))
    admin_config = AdminConfig(
        socket=Path(admin.string("socket", str(runtime_dir / paths.SOCKET_NAME))),
        socket_mode=_socket_mode(admin, "socket_mode"),
        group=admin.string("group", None),
        request_timeout=admin.duration("request_timeout", 30.0),
        idle_timeout=admin.duration("idle_timeout", 60.0),
        max_connections=admin.integer("max_connections", 64, minimum=ADMIN_RESERVED_CONNECTIONS + 1),
        max_connections_per_uid=admin.integer("max_connections_per_uid", 16, minimum=1),
        tenants=FrozenDict(tenants),
    )
    others = admin_config.max_connections - ADMIN_RESERVED_CONNECTIONS  # the seats anyone may take
    if admin_config.max_connections_per_uid > others:
        admin.fail("max_connections_per_uid", f"must be at most max_connections - {ADMIN_RESERVED_CONNECTIONS} "
                   f"(the seats kept for root), {others}, got {admin_config.max_connections_per_uid}")

    metrics = top.table("metrics")
    metrics.check_keys(("address", "enabled", "per_connection"))
    address: str = metrics.string("address", _METRICS.address, empty=True)
    if address:
        try:
            split_host_port(address)
        except ValueError as exc:
            metrics.fail("address", str(exc))
    enabled = metrics.boolean("enabled", True) and bool(address)
    metrics_config = MetricsConfig(address=address, enabled=enabled,
                                   per_connection=metrics.boolean("per_connection", False))

    http = top.table("http")
    http.check_keys(("address", "max_body_bytes"))
    http_address: str = http.string("address", "", empty=True)
    if http_address:
        try:
            split_host_port(http_address)
        except ValueError as exc:
            http.fail("address", str(exc))
    http_config = HttpConfig(address=http_address,
                             max_body_bytes=http.integer("max_body_bytes", HttpConfig().max_body_bytes, minimum=1024))

    log = top.table("log")
    log.check_keys(("level", "format"))
    log_config = LogConfig(level=log.choice("level", "info", LOG_LEVELS),
                           format=log.choice("format", "auto", LOG_FORMATS))

    schedule = top.table("schedule")
    schedule.check_keys(("sync_interval", "health_interval", "token_interval", "cleanup_cron",
                         "scheduled_sync", "jitter"))
    schedule_config = ScheduleConfig(
        sync_interval=schedule.duration("sync_interval", _SCHEDULE.sync_interval),
        health_interval=schedule.duration("health_interval", _SCHEDULE.health_interval),
        token_interval=schedule.duration("token_interval", _SCHEDULE.token_interval),
        cleanup_cron=_check_cron(schedule, "cleanup_cron", _SCHEDULE.cleanup_cron),
        scheduled_sync=schedule.boolean("scheduled_sync", True),
        jitter=schedule.duration("jitter", _SCHEDULE.jitter, positive=False),
    )

    staleness = top.table("staleness")
    staleness.check_keys(("fresh_below", "stale_after", "min_gap"))
    staleness_config = StalenessConfig(
        fresh_below=staleness.duration("fresh_below", _STALENESS.fresh_below),
        stale_after=staleness.duration("stale_after", _STALENESS.stale_after),
        min_gap=staleness.duration("min_gap", _STALENESS.min_gap, positive=False),
    )
    if staleness_config.fresh_below >= staleness_config.stale_after:
        staleness.fail(
            "stale_after" if staleness.has("stale_after") else "fresh_below",
            f"stale_after ({staleness_config.stale_after:g}s) must be longer than "
            f"fresh_below ({staleness_config.fresh_below:g}s)",
        )

    sync = top.table("sync")
    sync.check_keys(("page_concurrency", "db_threads", "job_history", "job_max_age", "max_running",
                     "tenant_max_running", "max_delete_share", "stats_retention_days"))
    sync_config = SyncConfig(
        page_concurrency=sync.integer("page_concurrency", _SYNC.page_concurrency, minimum=1),
        db_threads=sync.integer("db_threads", _SYNC.db_threads, minimum=1),
        job_history=sync.integer("job_history", _SYNC.job_history, minimum=1),
        job_max_age=sync.duration("job_max_age", _SYNC.job_max_age),
        max_running=sync.integer("max_running", _SYNC.max_running, minimum=1),
        tenant_max_running=sync.integer("tenant_max_running", _SYNC.tenant_max_running, minimum=1),
        max_delete_share=_share(sync, "max_delete_share", _SYNC.max_delete_share),
        stats_retention_days=sync.integer("stats_retention_days", _SYNC.stats_retention_days, minimum=1),
    )

    store = top.table("store")
    store.check_keys(("statement_timeout", "lock_timeout"))
    store_config = StoreConfig(
        statement_timeout=store.duration("statement_timeout", _STORE.statement_timeout),
        lock_timeout=store.duration("lock_timeout", _STORE.lock_timeout),
    )

    cluster = top.table("cluster")
    cluster.check_keys(("member_name", "lease_ttl", "handover"))
    cluster_config = ClusterConfig(
        member_name=cluster.string("member_name", None),
        lease_ttl=cluster.duration("lease_ttl", _CLUSTER.lease_ttl),
        handover=cluster.duration("handover", _CLUSTER.handover, positive=False),
    )
    if cluster_config.lease_ttl < 2:
        cluster.fail("lease_ttl", "must be at least 2s (it is renewed every quarter of it)")

    events = top.table("events")
    events.check_keys(("redis_url", "stream", "history_stream", "jobs_stream", "maxlen", "payload", "retention"))
    redis_url = events.string("redis_url", None)
    if redis_url is not None and not redis_url.startswith(("redis://", "rediss://", "unix://")):
        events.fail("redis_url", f"expected a redis://, rediss:// or unix:// URL, got {redis_url[:40]!r}")
    templates = {}
    for key, fields in (("stream", ("tenant", "entity")), ("history_stream", ("tenant", "entity", "app")),
                        ("jobs_stream", ("tenant",))):
        template = events.string(key, getattr(_EVENTS, key))
        try:
            template.format(**dict.fromkeys(fields, "x"))
        except (KeyError, IndexError, ValueError) as exc:
            events.fail(key, f"a template may use only {{{'}, {'.join(fields)}}}: {exc}")
        templates[key] = template
    events_config = EventsConfig(
        redis_url=redis_url, maxlen=events.integer("maxlen", _EVENTS.maxlen, minimum=0),
        payload=events.choice("payload", _EVENTS.payload, ("full", "thin")),
        retention=events.duration("retention", _EVENTS.retention), **templates,
    )

    secrets = top.table("secrets")
    secrets.check_keys(("key_files", "credential"))
    secrets_config = SecretsConfig(
        key_files=tuple(Path(p) for p in _string_list(secrets, "key_files")),
        credential=secrets.string("credential", None),
    )

    policies = top.table("policies")
    policies.check_keys(("breaker", "retry", "token_refresh_buffer", "rate_groups", "limits"))
    breaker = policies.table("breaker")
    breaker.check_keys(("failure_threshold", "cooldown", "max_cooldown"))
    breaker_config = BreakerSettings(
        failure_threshold=breaker.integer("failure_threshold", 5, minimum=1),
        cooldown=breaker.duration("cooldown", 60.0),
        max_cooldown=breaker.duration("max_cooldown", 1800.0),
    )
    if breaker_config.max_cooldown < breaker_config.cooldown:
        breaker.fail("max_cooldown", "must be at least as long as cooldown")
    retry = policies.table("retry")
    retry.check_keys(("attempts", "base", "cap", "rate_limited_attempts"))
    retry_config = RetryPolicy(
        attempts=retry.integer("attempts", 3, minimum=1),
        base=retry.duration("base", 1.0),
        cap=retry.duration("cap", 30.0),
        rate_limited_attempts=retry.integer("rate_limited_attempts", 8, minimum=1),
    )
    limits = policies.table("limits")
    limits.check_keys(("request_deadline", "max_retry_after", "max_response_bytes", "max_clock_skew"))
    default_limits = ProviderLimits()
    limits_config = ProviderLimits(
        request_deadline=limits.duration("request_deadline", default_limits.request_deadline),
        max_retry_after=limits.duration("max_retry_after", default_limits.max_retry_after),
        max_response_bytes=limits.integer("max_response_bytes", default_limits.max_response_bytes, minimum=65536),
        max_clock_skew=limits.duration("max_clock_skew", default_limits.max_clock_skew),
    )
    groups = policies.table("rate_groups")
    group_configs: dict[str, RateGroupConfig] = {}
    for group in groups.data:
        table = groups.table(group)
        table.check_keys(("rate", "burst"))
        if not table.has("rate"):
            table.fail("rate", "missing required key 'rate' (e.g. \"10/min\")")
        rate_text: str = table.string("rate", None)
        burst = table._typed("burst", (int, float), "a number", 1)
        from freshd.policies.ratelimit import Rate

        try:
            Rate.parse(rate_text, float(burst))
        except ValueError as exc:
            table.fail("rate" if "burst" not in str(exc) else "burst", str(exc))
        group_configs[group] = RateGroupConfig(rate_text, float(burst))
    policies_config = PoliciesConfig(
        breaker=breaker_config, retry=retry_config,
        token_refresh_buffer=policies.duration("token_refresh_buffer", 600.0, positive=False),
        rate_groups=FrozenDict(group_configs),
        limits=limits_config,
    )

    return Config(
        database_url=database_url,
        state_dir=state_dir,
        runtime_dir=runtime_dir,
        admin=admin_config,
        metrics=metrics_config,
        http=http_config,
        log=log_config,
        schedule=schedule_config,
        staleness=staleness_config,
        sync=sync_config,
        store=store_config,
        cluster=cluster_config,
        events=events_config,
        secrets=secrets_config,
        policies=policies_config,
        connections=_connections(top, providers),
        source=source,
    )


# -- environment ---------------------------------------------------------------------------------------

# variable -> (section, key): applied to the parsed file data, so the same validation runs
_ENV_KEYS: dict[str, tuple[str | None, str]] = {
    "FRESHD_DATABASE_URL": (None, "database_url"),
    "FRESHD_STATE_DIR": (None, "state_dir"),
    "FRESHD_RUNTIME_DIR": (None, "runtime_dir"),
    "FRESHD_SOCKET": ("admin", "socket"),
    "FRESHD_METRICS_ADDRESS": ("metrics", "address"),
    "FRESHD_HTTP_ADDRESS": ("http", "address"),
    "FRESHD_LOG_LEVEL": ("log", "level"),
    "FRESHD_LOG_FORMAT": ("log", "format"),
    "FRESHD_MEMBER_NAME": ("cluster", "member_name"),
    "FRESHD_REDIS_URL": ("events", "redis_url"),
}


def _overlay_env(data: dict[str, Any], env: Mapping[str, str]) -> dict[str, str]:
    """Write the environment overrides into `data`; returns key path -> variable, for errors."""
    origins: dict[str, str] = {}
    for variable, (section, key) in _ENV_KEYS.items():
        value = env.get(variable)
        if value is None or (value == "" and variable != "FRESHD_METRICS_ADDRESS"):
            continue
        target = data
        if section is not None:
            current = data.get(section)
            target = dict(current) if isinstance(current, dict) else {}
            data[section] = target
        target[key] = value
        origins[f"{section}.{key}" if section else key] = variable
    return origins


class _EnvWhere(_Where):
    """Names the environment variable when the bad value came from one."""

    def __init__(self, inner: _Where, origins: Mapping[str, str]) -> None:
        self.source = inner.source
        self.lines = inner.lines
        self.origins = origins

    def __call__(self, key: str) -> str:
        if (variable := self.origins.get(key)) is not None:
            return f"${variable} ({key})"
        return super().__call__(key)


# -- loading -------------------------------------------------------------------------------------------


def _read(path: Path) -> tuple[str, dict[str, Any]]:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the configuration: {exc.strerror or exc}", where=str(path)) from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"not UTF-8 text: {exc}", where=str(path)) from exc
    try:
        return text, tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        match = re.search(r"\(at line (\d+), column \d+\)", message)
        where = f"{path}:{match.group(1)}" if match else str(path)
        raise ConfigError(f"invalid TOML: {message}", where=where) from exc


def load_config(
    path: Path | None,
    env: Mapping[str, str] | None = None,
    *,
    providers: Collection[str] = DEFAULT_PROVIDERS,
) -> Config:
    """Read `path` (None: `freshd.paths.DEFAULT_CONFIG_PATH` if it exists, else defaults only),
    apply the environment overrides, validate everything, and return a new `Config`.

    Raises `ConfigError` naming the key (and ``file:line`` when found); nothing is half-applied:
    this function has no side effects, so a failed load leaves the caller's Config in place.
    """
    env = os.environ if env is None else env
    if path is None and paths.DEFAULT_CONFIG_PATH.exists():
        path = paths.DEFAULT_CONFIG_PATH
    text, data = ("", {}) if path is None else _read(Path(path))
    where = _Where(path, text)
    origins = _overlay_env(data, env)
    if origins:
        where = _EnvWhere(where, origins)
    return _build(data, where, env, providers, path)

