"""Typed messages to a connection actor (frozen, slotted; dispatched with `match`).

Senders use the supervisor's `send_nowait`: a message is a nudge, never the
only copy of intent.  Jobs are rows in the store first, so an actor that
restarts (or misses a nudge) finds its live job there.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import outcome
import trio

from freshd.connectors.base import ConnectionSettings, Connector


@dataclass(frozen=True, slots=True)
class JobQueued:
    """A job row for this connection was queued: run it when idle."""

    job_id: int


@dataclass(frozen=True, slots=True)
class PauseJob:
    job_id: int


@dataclass(frozen=True, slots=True)
class ResumeJob:
    job_id: int


@dataclass(frozen=True, slots=True)
class CancelJob:
    job_id: int


@dataclass(frozen=True, slots=True)
class UpdateSettings:
    """The connection's configuration changed (reload, `connections add` over an existing name)."""

    settings: ConnectionSettings


@dataclass(frozen=True, slots=True)
class RefreshToken:
    """The token sweep: refresh the access token if it expires within the buffer."""


@dataclass(frozen=True, slots=True)
class Probe:
    """The health sweep: make the connector's cheap call (an open breaker's probe, when due)."""


@dataclass(frozen=True, slots=True)
class Stop:
    """Finish the current page, mark the job interrupted, and exit."""


@dataclass(frozen=True, slots=True)
class WithConnector:
    """Two-way sync: run `call` (a write, a lookup) with a connector built on this connection's
    policies (rate limits, breaker, token refresh), and send its outcome (the value or the error
    it raised) to `reply`.  Credentials the provider refuses put the connection into
    reauth_required, as a sync's would."""

    call: Callable[[Connector], Awaitable[Any]]
    reply: trio.MemorySendChannel[outcome.Outcome[Any]]


ActorMessage = (JobQueued | PauseJob | ResumeJob | CancelJob | UpdateSettings | RefreshToken | Probe | Stop
                | WithConnector)
