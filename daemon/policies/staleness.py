"""Staleness: when a connection's data may, must, or must not be synced.

    fresh  (age < fresh_below, default 2 h)   scheduled syncs skip it; manual ones may run
    stale  (age > stale_after, default 4 h)   shown as stale; the sweep syncs it
    gap    (last start < min_gap ago, 5 min) nothing starts, manual included, unless forced

A pure function of times, so the sweeps, the admin command and the status view
all agree, and tests need no clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum


class Verdict(StrEnum):
    SYNC = "sync"
    SKIP_FRESH = "skip_fresh"  # scheduled only: the data is fresh enough
    DEFER_GAP = "defer_gap"  # too soon after the last sync started


@dataclass(frozen=True, slots=True)
class Staleness:
    fresh_below: float = 2 * 3600.0
    stale_after: float = 4 * 3600.0
    min_gap: float = 5 * 60.0

    def decide(
        self,
        *,
        now: datetime,
        last_success_at: datetime | None,
        last_started_at: datetime | None,
        scheduled: bool,
        force: bool = False,
    ) -> Decision:
        if force:
            return Decision(Verdict.SYNC, "forced", None)
        if last_started_at is not None and now - last_started_at < timedelta(seconds=self.min_gap):
            retry_at = last_started_at + timedelta(seconds=self.min_gap)
            return Decision(Verdict.DEFER_GAP, f"the last sync started {_human(now - last_started_at)} ago; "
                            f"the minimum gap is {_human(timedelta(seconds=self.min_gap))}", retry_at)
        if scheduled and last_success_at is not None and self.age(now, last_success_at) < self.fresh_below:
            return Decision(Verdict.SKIP_FRESH, "the data is fresh", self.due_at(last_success_at, last_started_at))
        return Decision(Verdict.SYNC, "due", None)

    @staticmethod
    def age(now: datetime, last_success_at: datetime) -> float:
        return (now - last_success_at).total_seconds()

    def is_stale(self, now: datetime, last_success_at: datetime | None) -> bool:
        return last_success_at is None or self.age(now, last_success_at) > self.stale_after

    def due_at(self, last_success_at: datetime | None, last_started_at: datetime | None) -> datetime | None:
        """When a scheduled sync may next run: fresh no more, and past the gap."""
        moments = []
        if last_success_at is not None:
            moments.append(last_success_at + timedelta(seconds=self.fresh_below))
        if last_started_at is not None:
            moments.append(last_started_at + timedelta(seconds=self.min_gap))
        return max(moments) if moments else None


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: Verdict
    reason: str
    retry_at: datetime | None


def _human(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"
