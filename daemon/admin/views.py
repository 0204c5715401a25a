"""The JSON shapes of jobs that the admin API and the change events (freshd.events) both send.

A leaf: it imports the job row and its progress, nothing that runs.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from freshd.progress import JobProgress
from freshd.store.jobs import JobRow, JobStatus


def iso(moment: datetime | None) -> str | None:
    return moment.isoformat().replace("+00:00", "Z") if moment else None


def job_json(job: JobRow, live: JobProgress | None = None) -> dict[str, Any]:
    progress = live or JobProgress.from_json(list(job.progress), job.progress)
    return {
        "id": job.id,
        "connection": job.connection,
        "kind": job.kind.value,
        "status": job.status.value,
        "trigger": job.trigger,
        "progress": {
            name: {**{k: v for k, v in p.as_json().items() if k != "state"}, "pending": p.pending,
                   "rate": round(p.rate, 1)}
            for name, p in progress.entities.items()
        },
        "totals": progress.totals(),
        "options": job.options,
        "percent": 100.0 if job.status is JobStatus.COMPLETED else progress.percent(),
        "eta_seconds": progress.eta_seconds() if job.status is JobStatus.RUNNING else None,
        "created_at": iso(job.created_at),
        "started_at": iso(job.started_at),
        "finished_at": iso(job.finished_at),
        "error": job.error,
        "retry_of": job.retry_of,
        "confirm_deletes": job.confirm_deletes,
    }
