"""A connection's state as its actor keeps it and status shows it: the states, the transitions the
actor may make between them (checked by `ConnectionActor.change_state`), the status record, and the
daemon-wide policy knobs every actor is built with."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum, StrEnum

from freshd.policies.breaker import BreakerSettings, BreakerState
from freshd.policies.limits import ProviderLimits
from freshd.policies.retry import RetryPolicy
from freshd.policies.tokens import DEFAULT_BUFFER

MAX_DELETE_SHARE = 0.10  # a reconciliation deleting more of an entity than this is held for confirmation


class Lookup(Enum):
    """The actor's live job is not known yet: ask the store."""

    TOKEN = "lookup"


LOOKUP = Lookup.TOKEN


class ConnectionState(StrEnum):
    IDLE = "idle"
    SYNCING = "syncing"
    PAUSED = "paused"
    ERROR = "error"  # the last sync failed; the next one may succeed
    REAUTH_REQUIRED = "reauth_required"  # credentials rejected: no sync until they change
    RESTARTING = "restarting"  # set by the supervisor while the actor backs off after a crash
    # no actor at all: the connection's rows are kept, nothing syncs (set by the supervisor)
    DISABLED = "disabled"  # `enabled = false` in the config file
    DETACHED = "detached"  # left the config file; `freshctl connections remove NAME --purge` deletes it


TRANSITIONS: dict[ConnectionState, frozenset[ConnectionState]] = {
    # IDLE/ERROR -> REAUTH_REQUIRED: the token sweep or a probe found the grant refused
    ConnectionState.IDLE: frozenset({ConnectionState.SYNCING, ConnectionState.PAUSED,
                                     ConnectionState.REAUTH_REQUIRED}),
    ConnectionState.SYNCING: frozenset({ConnectionState.IDLE, ConnectionState.PAUSED, ConnectionState.ERROR,
                                        ConnectionState.REAUTH_REQUIRED}),
    ConnectionState.PAUSED: frozenset({ConnectionState.SYNCING, ConnectionState.IDLE, ConnectionState.ERROR}),
    ConnectionState.ERROR: frozenset({ConnectionState.SYNCING, ConnectionState.IDLE, ConnectionState.PAUSED,
                                      ConnectionState.REAUTH_REQUIRED}),
    ConnectionState.REAUTH_REQUIRED: frozenset({ConnectionState.IDLE}),
    ConnectionState.RESTARTING: frozenset(set(ConnectionState)),
    ConnectionState.DISABLED: frozenset(),  # never an actor's state: a parked connection has none
    ConnectionState.DETACHED: frozenset(),
}


@dataclass(frozen=True, slots=True)
class ConnectionStatus:
    """What `freshctl status` shows for one connection (a frozen record)."""

    name: str
    provider: str
    tenant: str
    state: ConnectionState
    last_success_at: datetime | None
    next_sync_at: datetime | None
    error: str | None
    job_id: int | None
    restarts: int = 0
    breaker: BreakerState = BreakerState.CLOSED
    breaker_retry_at: float | None = None  # epoch seconds: when an open breaker lets a probe through
    rate_limit: str | None = None  # the default bucket's current rate ("2/s burst 2"), None: unlimited
    token_expires_at: float | None = None  # epoch seconds, for OAuth-style connections
    health: str | None = None  # the last probe's verdict: "ok" or why not
    probed_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class PolicySettings:
    """The daemon-wide policy knobs (from [policies]); per-connection options refine the rates."""

    breaker: BreakerSettings = field(default_factory=BreakerSettings)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    token_refresh_buffer: float = DEFAULT_BUFFER
    limits: ProviderLimits = field(default_factory=ProviderLimits)
    max_delete_share: float = MAX_DELETE_SHARE
    events: str | None = None  # change events to the outbox: "full", "thin" or None (no Redis configured)
