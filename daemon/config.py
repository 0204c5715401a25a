"""The configuration: one TOML file plus a few environment variables -> a frozen `Config`.

    load_config(path, env)   read, validate, return a new Config (or raise ConfigError)

Policy:

* The file is read whole, validated whole, and only then turned into a `Config`; every problem
  found is reported at once (`ConfigErrors`; `ConfigError` when there is one) and nothing is
  applied (a SIGHUP with a broken file keeps the running configuration).  An empty file is
  valid: every default, no connections.
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

Each section is read from its dataclass (`_section`): the keys are its fields, the types theirs,
and every default is written once, on the field.  `config/freshd.toml` is the documented example
with every key and its default.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import os
import re
import tomllib
import typing
from collections.abc import Callable, Collection, Iterator, Mapping
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
from freshd.policies.tokens import DEFAULT_BUFFER
from freshd.twoway.settings import MAX_BATCH_SIZE, MAX_WRITE_RATE, PairConfig, TwoWaySettings

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
    token_refresh_buffer: float = DEFAULT_BUFFER  # seconds before expiry a token is refreshed
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
    twoway: TwoWaySettings = field(default_factory=TwoWaySettings)
    pairs: tuple[PairConfig, ...] = ()
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
    """Reads one table; unknown keys are errors.  A bad value raises ConfigError (`fail`); the
    section readers catch it with `collect`, so every problem of the file is reported at once."""

    def __init__(self, data: Mapping[str, Any], prefix: str, where: _Where,
                 errors: list[ConfigError] | None = None) -> None:
        self.data = data
        self.prefix = prefix
        self.where = where
        self.errors: list[ConfigError] = [] if errors is None else errors  # shared by the whole file

    @contextlib.contextmanager
    def collect(self) -> Iterator[None]:
        """Record a ConfigError (or each of ConfigErrors) raised inside, and go on."""
        try:
            yield
        except ConfigErrors as exc:
            self.errors.extend(exc.errors)
        except ConfigError as exc:
            self.errors.append(exc)

    def child(self, data: Mapping[str, Any], prefix: str) -> _Reader:
        return _Reader(data, prefix, self.where, self.errors)

    def path(self, key: str) -> str:
        return f"{self.prefix}.{key}" if self.prefix else key

    def fail(self, key: str, message: str) -> NoReturn:
        raise ConfigError(message, where=self.where(self.path(key)))

    def check_keys(self, known: Collection[str], *, stop: bool = False) -> None:
        """Every unknown key recorded; `stop`: raised at once instead (the table is not read further)."""
        unknown = [ConfigError(f"unknown key {key!r}; {_suggest(key, known)}", where=self.where(self.path(key)))
                   for key in self.data if key not in known]
        if stop and unknown:
            raise unknown[0] if len(unknown) == 1 else ConfigErrors(unknown)
        self.errors.extend(unknown)

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
        value: Mapping[str, Any] = {}
        with self.collect():  # not a table: recorded, and read as an empty one
            value = self._typed(key, dict, "a table", {})
        return self.child(value, self.path(key))

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


def _string_list(reader: _Reader, key: str, default: tuple[str, ...] = ()) -> tuple[str, ...]:
    value = reader._typed(key, list, "a list of strings", default)
    if not all(isinstance(item, str) and item for item in value):
        reader.fail(key, "expected a list of non-empty strings")
    return tuple(value)


# -- sections ------------------------------------------------------------------------------------------

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


def _socket_mode(reader: _Reader, key: str, default: int) -> int:
    if not reader.has(key):
        return default
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
    reader.check_keys(_field_names(ConnectionConfig), stop=True)  # a misspelt key may be what a check wants
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
        with top.collect():  # each connection's problems, then the next one's
            if not isinstance(item, dict):
                raise ConfigError(f"expected a table, got {_describe(item)}", where=top.where(prefix))
            spec = _connection(top.child(item, prefix), providers)
            if spec.name in seen:
                raise ConfigError(
                    f"duplicate connection name {spec.name!r} (also connections[{seen[spec.name]}])",
                    where=top.where(f"{prefix}.name"),
                )
            seen[spec.name] = index
            result.append(spec)
    return tuple(result)


def _twoway(top: _Reader) -> TwoWaySettings:
    section = top.table("twoway")
    default = TwoWaySettings()
    batch_size, rate = default.batch_size, default.write_rate_per_minute
    with section.collect():
        batch_size = section.integer("batch_size", default.batch_size, minimum=1)
        if batch_size > MAX_BATCH_SIZE:
            section.fail("batch_size", f"must be at most {MAX_BATCH_SIZE}, got {batch_size}")
    with section.collect():
        rate = section._typed("write_rate_per_minute", (int, float), "a number", default.write_rate_per_minute)
        if not 0 < rate <= MAX_WRITE_RATE:
            section.fail("write_rate_per_minute", f"must be above 0 and at most {MAX_WRITE_RATE:g}, got {rate}")
    read = {"batch_size": lambda *_: batch_size, "write_rate_per_minute": lambda *_: float(rate)}
    return _section(section, TwoWaySettings, read=read, zero_ok=("batch_delay",))


def _pairs(top: _Reader) -> tuple[PairConfig, ...]:
    """[pairs.NAME]: left, right, entities (the shipped mappings) and per-entity tables (overrides);
    the mapping itself is checked against the connections' providers when the pair is applied."""
    section = top.table("pairs")
    out = []
    for name in section.data:
        if not _NAME.fullmatch(str(name)):
            section.fail(name, "a pair's name is letters, digits, '.', '_' or '-' (at most 64)")
        pair = section.table(name)
        for side in ("left", "right"):
            if not pair.has(side):
                pair.fail(side, f"missing required key {side!r} (a connection name)")
        listed = _string_list(pair, "entities")
        entities: dict[str, Any] = {entity: {} for entity in listed}
        for key, value in pair.data.items():
            if key in ("left", "right", "entities"):
                continue
            if not isinstance(value, dict):
                pair.fail(key, "expected left, right, entities or an entity's table ([pairs.NAME.ENTITY])")
            entities[key] = value
        if not entities:
            pair.fail("entities", "name at least one entity (e.g. entities = [\"customers\"])")
        out.append(PairConfig(str(name), pair.string("left", None), pair.string("right", None),
                              {"entities": entities}))
    return tuple(out)


def _check_cron(reader: _Reader, key: str, default: str) -> str:
    expr: str = reader.string(key, default)
    # the scheduler's own reading of crontab syntax (imported late: it pulls in APScheduler)
    from freshd.scheduler import cron_trigger

    try:
        cron_trigger(expr)
    except ValueError as exc:
        reader.fail(key, f"invalid cron expression {expr!r}: {exc}")
    return expr


# -- sections, read from their dataclasses ---------------------------------------------------------------

_S = TypeVar("_S")
Read = Callable[[_Reader, str, Any], Any]  # (table, key, the field's default) -> value; raises ConfigError


def _field_names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


def _default(f: dataclasses.Field[Any]) -> Any:
    """The field's default (None for a required field: its reader says it is missing)."""
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _section(
    table: _Reader, cls: type[_S], *, read: Mapping[str, Read] | None = None, given: Mapping[str, Any] | None = None,
    minimum: Mapping[str, int] | None = None, zero_ok: Collection[str] = (),
) -> _S:
    """A [table] read into `cls`: one key per field, of the field's name, read by the field's type
    (bool, int, float = a duration, str, str | None) with the field's default; `read` reads a field
    another way, `given` fields the caller has read.  Integers are at least 1 unless `minimum`
    says otherwise; durations are longer than zero unless in `zero_ok`.  A bad value is recorded
    (every one is reported) and its default used: the caller checks `table.errors` before relying
    on the values together."""
    read, given, minimum = read or {}, given or {}, minimum or {}
    table.check_keys(_field_names(cls))
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(typing.cast(Any, cls)):
        if f.name in given:
            continue
        default, kind = _default(f), hints[f.name]
        with table.collect():
            if f.name in read:
                values[f.name] = read[f.name](table, f.name, default)
            elif kind is bool:
                values[f.name] = table.boolean(f.name, default)
            elif kind is int:
                values[f.name] = table.integer(f.name, default, minimum=minimum.get(f.name, 1))
            elif kind is float:
                values[f.name] = table.duration(f.name, default, positive=f.name not in zero_ok)
            elif kind in (str, str | None):
                values[f.name] = table.string(f.name, default)
            else:
                raise TypeError(f"{cls.__name__}.{f.name}: no reader for {kind}; pass read= or given=")
        values.setdefault(f.name, default)
    return cls(**values, **given)


def _address(table: _Reader, key: str, default: str) -> str:
    address: str = table.string(key, default, empty=True)
    if address:
        try:
            split_host_port(address)
        except ValueError as exc:
            table.fail(key, str(exc))
    return address


def _choice(choices: Collection[str]) -> Read:
    return lambda table, key, default: table.choice(key, default, choices)


def _redis_url(table: _Reader, key: str, default: str | None) -> str | None:
    url: str | None = table.string(key, default)
    if url is not None and not url.startswith(("redis://", "rediss://", "unix://")):
        table.fail(key, f"expected a redis://, rediss:// or unix:// URL, got {url[:40]!r}")
    return url


def _template(*fields: str) -> Read:
    def read(table: _Reader, key: str, default: str) -> str:
        template: str = table.string(key, default)
        try:
            template.format(**dict.fromkeys(fields, "x"))
        except (KeyError, IndexError, ValueError) as exc:
            table.fail(key, f"a template may use only {{{'}, {'.join(fields)}}}: {exc}")
        return template
    return read


def _tenants(admin: _Reader) -> FrozenDict[str, TenantAccess]:
    table = admin.table("tenants")
    tenants: dict[str, TenantAccess] = {}
    for tenant in table.data:
        with table.collect():
            access = table.table(tenant)
            tenants[tenant] = _section(access, TenantAccess, read={"users": _string_list, "groups": _string_list})
    return FrozenDict(tenants)


def _rate_groups(policies: _Reader) -> FrozenDict[str, RateGroupConfig]:
    from freshd.policies.ratelimit import Rate

    def rate(table: _Reader, key: str, default: None) -> str:
        if not table.has(key):
            table.fail(key, "missing required key 'rate' (e.g. \"10/min\")")
        return str(table.string(key, default))

    def burst(table: _Reader, key: str, default: float) -> float:
        return float(table._typed(key, (int, float), "a number", default))

    groups = policies.table("rate_groups")
    configs: dict[str, RateGroupConfig] = {}
    for group in groups.data:
        errors = len(groups.errors)
        table = groups.table(group)
        config = _section(table, RateGroupConfig, read={"rate": rate, "burst": burst})
        if len(groups.errors) == errors:
            with table.collect():
                try:
                    Rate.parse(config.rate, config.burst)
                except ValueError as exc:
                    table.fail("rate" if "burst" not in str(exc) else "burst", str(exc))
                configs[group] = config
    return FrozenDict(configs)


def _policies(top: _Reader) -> PoliciesConfig:
    policies = top.table("policies")
    breaker, errors = policies.table("breaker"), len(policies.errors)
    breaker_config = _section(breaker, BreakerSettings)
    if len(breaker.errors) == errors and breaker_config.max_cooldown < breaker_config.cooldown:
        with breaker.collect():
            breaker.fail("max_cooldown", "must be at least as long as cooldown")
    return _section(policies, PoliciesConfig, zero_ok=("token_refresh_buffer",), given={
        "breaker": breaker_config,
        "retry": _section(policies.table("retry"), RetryPolicy),
        "limits": _section(policies.table("limits"), ProviderLimits, minimum={"max_response_bytes": 65536}),
        "rate_groups": _rate_groups(policies),
    })


def _build(data: Mapping[str, Any], where: _Where, env: Mapping[str, str],
           providers: Collection[str], source: Path | None) -> Config:
    """Every section read and checked; all the problems found raised together (ConfigErrors), or
    the one found (ConfigError)."""
    top = _Reader(data, "", where)
    top.check_keys([name for name in _field_names(Config) if name != "source"])

    def database_url(table: _Reader, key: str, default: str | None) -> str | None:
        url: str | None = table.string(key, default)
        if url is not None and (problem := _check_database_url(url)) is not None:
            table.fail(key, problem)
        return url

    def path(default: Path) -> Read:
        return lambda table, key, _: Path(table.string(key, str(default)))

    url, state_dir, runtime_dir = None, paths.default_state_dir(env), paths.default_runtime_dir(env)
    with top.collect():
        url = database_url(top, "database_url", None)
    with top.collect():
        state_dir = path(state_dir)(top, "state_dir", None)
    with top.collect():
        runtime_dir = path(runtime_dir)(top, "runtime_dir", None)

    admin, errors = top.table("admin"), len(top.errors)
    admin_config = _section(admin, AdminConfig, given={"tenants": _tenants(admin)},
                            read={"socket": path(runtime_dir / paths.SOCKET_NAME),
                                  "socket_mode": _socket_mode},
                            minimum={"max_connections": ADMIN_RESERVED_CONNECTIONS + 1})
    others = admin_config.max_connections - ADMIN_RESERVED_CONNECTIONS  # the seats anyone may take
    if len(top.errors) == errors and admin_config.max_connections_per_uid > others:
        with admin.collect():
            admin.fail("max_connections_per_uid", f"must be at most max_connections - {ADMIN_RESERVED_CONNECTIONS} "
                       f"(the seats kept for root), {others}, got {admin_config.max_connections_per_uid}")

    metrics_config = _section(top.table("metrics"), MetricsConfig, read={"address": _address})
    if not metrics_config.address:  # an empty address disables the endpoint
        metrics_config = dataclasses.replace(metrics_config, enabled=False)

    staleness, errors = top.table("staleness"), len(top.errors)
    staleness_config = _section(staleness, StalenessConfig, zero_ok=("min_gap",))
    if len(top.errors) == errors and staleness_config.fresh_below >= staleness_config.stale_after:
        with staleness.collect():
            staleness.fail(
                "stale_after" if staleness.has("stale_after") else "fresh_below",
                f"stale_after ({staleness_config.stale_after:g}s) must be longer than "
                f"fresh_below ({staleness_config.fresh_below:g}s)",
            )

    cluster, errors = top.table("cluster"), len(top.errors)
    cluster_config = _section(cluster, ClusterConfig, zero_ok=("handover",))
    if len(top.errors) == errors and cluster_config.lease_ttl < 2:
        with cluster.collect():
            cluster.fail("lease_ttl", "must be at least 2s (it is renewed every quarter of it)")

    connections: tuple[ConnectionConfig, ...] = ()
    with top.collect():
        connections = _connections(top, providers)
    twoway_config: TwoWaySettings = TwoWaySettings()
    pair_configs: tuple[PairConfig, ...] = ()
    with top.collect():
        twoway_config = _twoway(top)
    with top.collect():
        pair_configs = _pairs(top)
    config = Config(
        database_url=url,
        state_dir=state_dir,
        runtime_dir=runtime_dir,
        admin=admin_config,
        metrics=metrics_config,
        http=_section(top.table("http"), HttpConfig, read={"address": _address},
                      minimum={"max_body_bytes": 1024}),
        log=_section(top.table("log"), LogConfig, read={"level": _choice(LOG_LEVELS), "format": _choice(LOG_FORMATS)}),
        schedule=_section(top.table("schedule"), ScheduleConfig, zero_ok=("jitter",),
                          read={"cleanup_cron": _check_cron}),
        staleness=staleness_config,
        sync=_section(top.table("sync"), SyncConfig, read={"max_delete_share": _share}),
        store=_section(top.table("store"), StoreConfig),
        cluster=cluster_config,
        events=_section(top.table("events"), EventsConfig, minimum={"maxlen": 0}, read={
            "redis_url": _redis_url, "payload": _choice(("full", "thin")),
            "stream": _template("tenant", "entity"), "history_stream": _template("tenant", "entity", "app"),
            "jobs_stream": _template("tenant")}),
        secrets=_section(top.table("secrets"), SecretsConfig, read={
            "key_files": lambda table, key, _: tuple(Path(p) for p in _string_list(table, key))}),
        policies=_policies(top),
        connections=connections,
        twoway=twoway_config,
        pairs=pair_configs,
        source=source,
    )
    if top.errors:
        raise top.errors[0] if len(top.errors) == 1 else ConfigErrors(top.errors)
    return config


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

