"""What the admin commands use of the running daemon: a narrow view, so freshd.app builds the
handler (`DaemonAdmin(daemon)`) without the admin package importing freshd.app back."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Protocol

from freshd.cluster import Membership
from freshd.config_model import Config
from freshd.events import Events
from freshd.policies.staleness import Staleness
from freshd.queueing import JobQueue
from freshd.store import Store
from freshd.supervisor import Supervisor
from freshd.twoway.service import TwoWay


class AdminHost(Protocol):
    """freshd.app.Daemon, as DaemonAdmin and ConsumerCommands see it."""

    @property
    def config(self) -> Config: ...  # the configuration running now (replaced on reload)

    @property
    def store(self) -> Store: ...

    @property
    def supervisor(self) -> Supervisor: ...

    @property
    def queue(self) -> JobQueue: ...  # every job the commands queue goes through it

    @property
    def membership(self) -> Membership | None: ...  # None until the store is open

    @property
    def events(self) -> Events | None: ...  # change events, when [events] redis_url is set

    @property
    def twoway(self) -> TwoWay | None: ...  # two-way runs and resolutions, once started

    @property
    def scheduler(self) -> Any: ...  # the APScheduler running the sweeps (None before it starts)

    @property
    def started_at(self) -> datetime: ...

    @property
    def metrics_url(self) -> str | None: ...

    @property
    def http_url(self) -> str | None: ...

    @property
    def staleness(self) -> Staleness: ...

    async def refresh_views(self) -> None: ...  # the typed views follow the stored connections
