"""Queueing sync jobs: the one funnel from "a sync is wanted" to a job row and its actor told.

Every job is queued through `JobQueue`: by the sweeps (sync, health), at start-up and on reload
(connections that never synced), and by the admin commands (sync, ensure, retry, connections add,
connections set_credential).  Each call

  1. creates the jobs in one transaction, none for a connection that already has a live job (that
     job is the answer: one live job per connection is a database fact).  A connection this member
     runs is written fenced by its lease, like its actor's writes: the sweeps skip a connection
     whose lease just moved (`owned_only`); an admin command is refused (`Fenced`).  A command's
     own writes (the connection it adds, an activity line naming the job) join the transaction;
  2. then sends each connection's actor JobQueued, in the order asked (the slots serve first
     come first).  Only a nudge: an actor that is not running finds its job in the store.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import NamedTuple, TypeVar

from freshd.messages import JobQueued
from freshd.store import Store, cluster, jobs
from freshd.store.db import Connection, check_fence
from freshd.store.jobs import JobRequest, JobRow
from freshd.supervisor import Supervisor

__all__ = ["Create", "JobQueue", "JobRequest", "Queued"]

T = TypeVar("T")


class Queued(NamedTuple):
    """A connection's live job after queueing, and whether this call created it."""

    job: JobRow
    created: bool


# inside the transaction: connection name -> request, in; connection name -> its live job, out
Create = Callable[[Mapping[str, JobRequest]], dict[str, Queued]]


class JobQueue:
    """Creates jobs in the store and tells their actors (see the module docstring)."""

    def __init__(self, store: Store, supervisor: Supervisor) -> None:
        self.store = store
        self.supervisor = supervisor

    async def queue_job(self, connection: str, request: JobRequest, trigger: str) -> Queued:
        """One connection's job (the admin commands): its live job, created or already there."""
        return (await self.queue_jobs({connection: request}, trigger))[connection]

    async def queue_jobs(
        self, wanted: Mapping[str, JobRequest], trigger: str, *, owned_only: bool = False,
    ) -> dict[str, Queued]:
        """Many connections' jobs in one transaction (the sweeps: a fleet at once), by name.

        `owned_only`: only connections this member runs, each still under its lease (the sweeps:
        each member queues its own); without it, a connection no member runs is written as is."""
        if owned_only and not any(r.connection_id in self.supervisor.fences() for r in wanted.values()):
            return {}  # nothing of ours: no transaction at all
        _, queued = await self.queue_with(lambda conn, create: create(wanted), trigger, owned_only=owned_only)
        return queued

    async def queue_with(
        self, write: Callable[[Connection, Create], T], trigger: str, *, owned_only: bool = False,
        ready: Callable[[T], Awaitable[None]] | None = None,
    ) -> tuple[T, dict[str, Queued]]:
        """The funnel: `write(conn, create)` runs in one transaction and queues jobs with `create`
        among its own writes (a connection added with its initial sync is never without it); once
        committed, `ready(result)` (e.g. the new connection's lease settled), then every actor is told.
        """
        fences = self.supervisor.fences()
        queued: dict[str, Queued] = {}

        def transaction(conn: Connection) -> T:
            queued.clear()  # a retried transaction starts over

            def create(wanted: Mapping[str, JobRequest]) -> dict[str, Queued]:
                mine = [fences[r.connection_id] for r in wanted.values() if r.connection_id in fences]
                held = cluster.lock_fences(conn, mine)
                if owned_only:
                    wanted = {name: r for name, r in wanted.items() if r.connection_id in held}
                else:
                    for fence in mine:
                        if fence.connection_id not in held:
                            check_fence(conn, fence)  # raises Fenced: our lease moved; nothing is written
                made = jobs.create_jobs(conn, list(wanted.values()), trigger)
                out = {name: Queued(*made[r.connection_id]) for name, r in wanted.items() if r.connection_id in made}
                queued.update(out)
                return out

            return write(conn, create)

        result = await self.store.call(transaction)
        if ready is not None:
            await ready(result)
        for name, entry in queued.items():  # in the order asked
            self.supervisor.send_nowait(name, JobQueued(entry.job.id))
        return result, queued
