"""The configuration as the daemon holds it: frozen, hashable dataclasses, one per TOML section.

`Config` and its sections (`AdminConfig`, `SyncConfig`, `ConnectionConfig`, ...) are plain records:
every key's default is written once, on its field, and `read_section` (freshd.config_reader) takes
the keys and their types from these fields.  `FrozenDict` keeps nested tables read-only and
hashable; `Credentials` keeps credential values out of ``repr()``, and `Config.secret_values()`
lists every secret for the log redactor.  Nothing here reads a file: see freshd.config.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn, TypeVar
from urllib.parse import urlsplit

from freshd import paths
from freshd.policies.breaker import BreakerSettings
from freshd.policies.limits import ProviderLimits
from freshd.policies.retry import RetryPolicy
from freshd.policies.tokens import DEFAULT_BUFFER
from freshd.twoway.settings import PairConfig, TwoWaySettings

__all__ = [
    "ADMIN_RESERVED_CONNECTIONS",
    "DEFAULT_PROVIDERS",
    "LOG_FORMATS",
    "LOG_LEVELS",
    "AdminConfig",
    "ClusterConfig",
    "Config",
    "ConnectionConfig",
    "Credentials",
    "EventsConfig",
    "FrozenDict",
    "HttpConfig",
    "LogConfig",
    "MetricsConfig",
    "PoliciesConfig",
    "RateGroupConfig",
    "ScheduleConfig",
    "SecretsConfig",
    "StalenessConfig",
    "StoreConfig",
    "SyncConfig",
    "TenantAccess",
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
