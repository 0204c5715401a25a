"""A job's control and progress: what the actor, the sync engine, the admin API and `watch` share.

`JobControl` carries pause/cancel requests from the actor to the running job (`ControlRequest`);
`JobProgress` is each entity's counts, totals and rate (`EntityProgress`), kept on the job row and
sent to watchers; `JobOutcome` is how a job ended.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import trio

from freshd.store.jobs import JobRow, JobStatus


class ControlRequest(StrEnum):
    NONE = "none"
    PAUSE = "pause"
    CANCEL = "cancel"


@dataclass
class JobControl:
    """Set by the actor; read by the writer at page boundaries."""

    request: ControlRequest = ControlRequest.NONE
    changed: trio.Event = field(default_factory=trio.Event)

    def set(self, request: ControlRequest) -> None:
        self.request = request
        self.changed.set()
        self.changed = trio.Event()


@dataclass
class EntityProgress:
    total: int | None = None
    processed: int = 0
    failed: int = 0
    skipped: int = 0
    state: str = "pending"  # pending | running | done | failed
    started: float | None = None  # monotonic
    rate: float = 0.0  # records/s while running
    estimated: bool = False  # `total` is an estimate (the provider offers no count)
    # what the commits did (a dry run: what they would have done)
    created: int = 0
    changed: int = 0
    deleted: int = 0

    @property
    def pending(self) -> int | None:
        """Items still to come: total - processed - failed - skipped (None while the total is unknown)."""
        if self.total is None:
            return None
        return max(0, self.total - self.processed - self.failed - self.skipped)

    def as_json(self) -> dict[str, Any]:
        return {"total": self.total, "processed": self.processed, "failed": self.failed,
                "skipped": self.skipped, "state": self.state, "estimated": self.estimated,
                "created": self.created, "changed": self.changed, "deleted": self.deleted}


@dataclass
class JobProgress:
    entities: dict[str, EntityProgress]
    rate: float = 0.0  # records/s of the whole job in this run (all entities so far)
    rate_ceiling: float | None = None  # records/s the rate limiter allows, when it sets one

    @classmethod
    def from_json(cls, names: list[str], stored: dict[str, Any]) -> JobProgress:
        entities = {}
        for name in names:
            saved = stored.get(name) or {}
            entities[name] = EntityProgress(
                total=saved.get("total"), processed=saved.get("processed", 0),
                failed=saved.get("failed", 0), skipped=saved.get("skipped", 0),
                state=saved.get("state", "pending"), estimated=bool(saved.get("estimated", False)),
                created=saved.get("created", 0), changed=saved.get("changed", 0), deleted=saved.get("deleted", 0),
            )
        return cls(entities)

    def as_json(self) -> dict[str, Any]:
        return {name: p.as_json() for name, p in self.entities.items()}

    def totals(self) -> dict[str, int | None]:
        """The job's figures summed over its entities; `total` and `pending` count the known totals
        (an entity finished without one counts what it went through)."""
        total = pending = 0
        known = False
        for p in self.entities.values():
            if p.total is not None:
                known = True
                total += max(p.total, p.processed + p.failed + p.skipped)
                pending += (p.pending or 0) if p.state not in ("done", "failed") else 0
            elif p.state == "done":
                known = True
                total += p.processed + p.failed + p.skipped
        return {"total": total if known else None,
                "processed": sum(p.processed for p in self.entities.values()),
                "failed": sum(p.failed for p in self.entities.values()),
                "skipped": sum(p.skipped for p in self.entities.values()),
                "pending": pending if known else None}

    def percent(self) -> float | None:
        known = [p for p in self.entities.values() if p.total is not None or p.state == "done"]
        if not known:
            return None
        total = done = 0.0
        for p in self.entities.values():
            if p.state == "done":
                total += 1
                done += 1
            elif p.total:
                total += 1
                done += min(1.0, (p.processed + p.failed + p.skipped) / p.total)
            else:
                total += 1
        return round(100.0 * done / total, 1) if total else None

    def eta_seconds(self) -> float | None:
        """The whole job's remaining time: the items still pending in the entities not finished
        (those whose total is known so far) at the job's observed rate, or at the rate limiter's
        ceiling when that is lower (the limiter is then the bottleneck).  None until an
        unfinished entity has a total and some rate was observed."""
        unfinished = [p for p in self.entities.values() if p.state not in ("done", "failed")]
        if not unfinished:
            return 0
        pending = [p.pending for p in unfinished if p.pending is not None]
        if not pending:
            return None
        rate = self.rate
        if self.rate_ceiling is not None and self.rate_ceiling > 0:
            rate = min(rate, self.rate_ceiling) if rate > 0 else self.rate_ceiling
        if rate <= 0:
            return None
        return math.ceil(sum(pending) / rate)


def stored_nothing_of_something(job: JobRow) -> bool:
    """A finished job that stored no record while the provider reported some (a non-zero total of
    its own, not an estimate): the data it should have brought is missing (health re-queues it)."""
    progress = JobProgress.from_json(list(job.progress), job.progress)
    reported = any(p.total and not p.estimated for p in progress.entities.values())
    return reported and not any(p.processed for p in progress.entities.values())


@dataclass(frozen=True, slots=True)
class JobOutcome:
    status: JobStatus
    error: str | None
    reauth_required: bool = False


def limiter_rate(policies: Any) -> float | None:
    """The records-per-second ceiling's base: the slowest rate of the connection's gate (its default
    bucket and rate groups; requests per second), None when nothing limits it (progress only)."""
    if policies is None:
        return None
    gate = policies.gate
    bucket = getattr(gate, "bucket", None)
    buckets = [bucket(None)] if callable(bucket) else []
    buckets += list(getattr(gate, "groups", ()))
    rates = [b.rate.per_second for b in buckets if getattr(b, "rate", None) is not None]
    return min(rates) if rates else None
