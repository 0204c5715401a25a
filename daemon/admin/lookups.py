"""The base of the daemon's admin command groups: the host, and the rows a command is about.

Each group (freshd.admin.connections, .jobs, .health, .tokens) holds the daemon as `AdminHost` and
lists its commands in `handlers()` for DaemonAdmin's table.  The lookups they share find a row as
the caller may see it: another tenant's connection or job does not exist for you (not_found);
`_require_active` refuses a parked connection (disabled or detached) and `_live_progress` is a
job's progress from its actor, when it runs here.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from freshd.admin.protocol import Caller, ErrorCode
from freshd.errors import AdminError
from freshd.progress import JobProgress
from freshd.store import connections, jobs
from freshd.store.jobs import JobRow

if TYPE_CHECKING:
    from freshd.admin.host import AdminHost

Handler = Callable[[dict[str, Any], Caller], Awaitable[Any]]


class CommandGroup:
    """Commands of one kind, on the running daemon."""

    def __init__(self, daemon: AdminHost) -> None:
        self.daemon = daemon

    def handlers(self) -> dict[str, Handler]:
        """Command name -> its method."""
        raise NotImplementedError

    async def _row(self, name: str, caller: Caller) -> connections.ConnectionRow:
        row = await self.daemon.store.call(connections.get_connection, name, self.daemon.store.keyring)
        if row is None or not caller.sees(row.tenant):  # another tenant's connection does not exist for you
            raise AdminError(ErrorCode.NOT_FOUND, f"no connection named {name!r}")
        return row

    async def _job(self, job_id: int, caller: Caller) -> JobRow:
        job = await self.daemon.store.call(jobs.get_job, job_id)
        if job is None or not caller.sees(job.tenant):
            raise AdminError(ErrorCode.NOT_FOUND, f"no job {job_id}")
        return job

    def _require_active(self, name: str) -> None:
        state = self.daemon.supervisor.parked(name)
        if state is not None:
            how = ("enable it in the config file and reload" if state.value == "disabled"
                   else "add it to the config file again and reload")
            raise AdminError(ErrorCode.CONFLICT, f"connection {name!r} is {state.value}: it does not sync; {how}")

    def _live_progress(self, job: JobRow) -> JobProgress | None:
        actor = self.daemon.supervisor.actor(job.connection)
        view = actor.job_view() if actor else None
        return view[1] if view and view[0].id == job.id else None
