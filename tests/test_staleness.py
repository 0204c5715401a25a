"""The staleness policy as a pure function of times."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from freshd.policies.staleness import Staleness, Verdict

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
POLICY = Staleness(fresh_below=2 * 3600, stale_after=4 * 3600, min_gap=300)


def decide(success_ago: float | None, started_ago: float | None, *, scheduled: bool, force: bool = False) -> Verdict:
    success = NOW - timedelta(seconds=success_ago) if success_ago is not None else None
    started = NOW - timedelta(seconds=started_ago) if started_ago is not None else None
    return POLICY.decide(now=NOW, last_success_at=success, last_started_at=started, scheduled=scheduled,
                         force=force).verdict


def test_scheduled_syncs_skip_fresh_data_and_run_when_not_fresh() -> None:
    assert decide(3600, 3600, scheduled=True) is Verdict.SKIP_FRESH
    assert decide(2 * 3600 + 1, 2 * 3600 + 1, scheduled=True) is Verdict.SYNC
    assert decide(None, None, scheduled=True) is Verdict.SYNC  # never synced


def test_manual_syncs_run_on_fresh_data_but_not_within_the_gap_unless_forced() -> None:
    assert decide(3600, 3600, scheduled=False) is Verdict.SYNC
    assert decide(60, 60, scheduled=False) is Verdict.DEFER_GAP
    assert decide(60, 60, scheduled=False, force=True) is Verdict.SYNC
    assert decide(None, 10, scheduled=True) is Verdict.DEFER_GAP  # a failing connection is not hammered


def test_stale_and_due_times() -> None:
    assert POLICY.is_stale(NOW, NOW - timedelta(hours=5))
    assert not POLICY.is_stale(NOW, NOW - timedelta(hours=3))
    assert POLICY.is_stale(NOW, None)
    success, started = NOW - timedelta(hours=1), NOW - timedelta(minutes=1)
    assert POLICY.due_at(success, started) == success + timedelta(hours=2)
    deferred = POLICY.decide(now=NOW, last_success_at=None, last_started_at=started, scheduled=False)
    assert deferred.retry_at == started + timedelta(minutes=5) and "minimum gap" in deferred.reason
