"""Typed messages to a connection actor (frozen, slotted; dispatched with `match`).

Senders use the supervisor's `send_nowait`: a message is a nudge, never the
only copy of intent.  Jobs are rows in the store first, so an actor that
restarts (or misses a nudge) finds its live job there.
"""

from __future__ import annotations

from dataclasses import dataclass

from freshd.connectors.base import ConnectionSettings


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


ActorMessage = JobQueued | PauseJob | ResumeJob | CancelJob | UpdateSettings | RefreshToken | Probe | Stop
