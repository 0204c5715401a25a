"""Membership and leases: which connections this daemon runs when several share one database.

`Membership.serve` registers this daemon (a member) and then, every `renew_interval`, runs one
lease round in one transaction (freshd.store.cluster.lease_round): heartbeat on the database
clock, renew the leases it holds (scoped by owner AND epoch), give back the connections another
member should run, take the ones that are its own and free or expired.  Who should run a
connection is decided by rendezvous (highest-random-weight) hashing with bounded loads over
the live members' stable names (an even split), so a member joining or leaving moves only its share; a member is
handed connections only once it has been alive for `handover` (a flapping member causes no
churn).  The supervisor runs exactly the connections this member holds, each actor writing
through a store fenced by its lease epoch (freshd.store.db.Fence).

A member that cannot renew before its leases' deadline, measured on its own monotonic clock
from the start of the last successful round, stops every actor at once: it does not wait to be
told (a SIGSTOPped daemon that wakes up finds its deadline passed).  Its in-flight requests
are cancelled; any write it still attempts is refused by the fence.

Error handling: a round that fails (database down) is retried at the next interval; the leases
run out after `lease_ttl` and the actors stop; the next successful round takes them again.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import socket
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field

import structlog
import trio

from freshd import __version__, metrics
from freshd.errors import StoreUnavailable
from freshd.store import Store, cluster
from freshd.store.db import Fence

log = structlog.get_logger(__name__)

DEADLINE_MARGIN = 1.0  # seconds the local lease deadline keeps ahead of the database's expiry


@dataclass(frozen=True, slots=True)
class ClusterSettings:
    member_name: str | None = None  # stable across restarts; default: host + admin socket path
    lease_ttl: float = 10.0
    handover: float = 10.0  # a joining member is handed connections once up this long

    @property
    def renew_interval(self) -> float:
        return self.lease_ttl / 4


def default_member_name(socket_path: str) -> str:
    return f"{socket.gethostname()}:{socket_path}"


def _weight(name: str, connection_id: int) -> int:
    return int.from_bytes(hashlib.blake2b(f"{name}\0{connection_id}".encode(), digest_size=8).digest(), "big")


def assign(connection_ids: Iterable[int], names: Iterable[str],
           together: Mapping[int, int] | None = None) -> dict[int, str]:
    """Rendezvous hashing with bounded loads: each connection goes to the member of highest weight
    for it that still has room under ceil(n / members).  Deterministic for the same inputs (every
    member computes the same split); a member joining or leaving moves about its share.

    `together`: connection id -> the id of its group (the two connections of a two-way pair run on
    one member: a run writes to both).  A group goes whole to the member of highest weight for its
    group id with room for it (else to the one with the most room: the bound is exceeded by less
    than a group)."""
    members = sorted(set(names))
    ids = sorted(set(connection_ids))
    if not members:
        return {}
    groups: dict[int, list[int]] = {}
    for cid in ids:
        groups.setdefault((together or {}).get(cid, cid), []).append(cid)
    room = dict.fromkeys(members, -(-len(ids) // len(members)))
    out: dict[int, str] = {}
    for anchor in sorted(groups):
        unit = groups[anchor]
        ranked = [name for _, name in sorted(((_weight(name, anchor), name) for name in members), reverse=True)]
        chosen = next((name for name in ranked if room[name] >= len(unit)), None)
        if chosen is None:
            chosen = max(ranked, key=lambda name: room[name])  # the first of the highest weight with most room
        room[chosen] -= len(unit)
        for cid in unit:
            out[cid] = chosen
    return out


def _pid_gone(host: str, pid: int) -> bool:
    """Is an earlier daemon on this host certainly not running any more?"""
    if host != socket.gethostname():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return pid == os.getpid()  # our own pid reused by this very process: that daemon is gone


# what the daemon gives the membership: the connections that may run (stored, not parked), and
# how to run exactly those whose leases it holds (the ids in the second argument are stopped at
# once, not at a committed cursor: their lease is gone, any write of theirs would be refused)
LoadIds = Callable[[], Awaitable[set[int]]]
# connection id -> its group's id, for connections that must run on one member (two-way pairs)
LoadGroups = Callable[[], Awaitable[dict[int, int]]]
RunOwned = Callable[[dict[int, Fence], set[int]], Awaitable[None]]


@dataclass
class Membership:
    store: Store
    settings: ClusterSettings
    name: str
    load_ids: LoadIds
    run_owned: RunOwned
    # told the number of live members after every round (shared rate groups are split by it)
    on_members: Callable[[int], None] | None = None
    load_groups: LoadGroups | None = None
    id: str = ""
    held: dict[int, int] = field(default_factory=dict)  # connection id -> epoch
    members: list[cluster.Member] = field(default_factory=list)
    deadline: float = 0.0  # trio clock: our leases are good until then
    _wake: trio.Event = field(default_factory=trio.Event)
    _lock: trio.Lock = field(default_factory=trio.Lock)  # one round at a time
    _rejoin: bool = False
    _splits: dict[tuple[frozenset[int], frozenset[str], frozenset[tuple[int, int]]], dict[int, str]] = field(
        default_factory=dict)
    _groups: dict[int, int] = field(default_factory=dict)

    # -- what others ask ------------------------------------------------------------------------------

    def owns(self, connection_id: int) -> bool:
        return connection_id in self.held and trio.current_time() < self.deadline

    def wake(self) -> None:
        """Run a round soon (a connection was removed or changed)."""
        self._wake.set()

    async def settle(self) -> None:
        """Run a round now and return when it is done (a connection was added here)."""
        await self._round()

    def alive_members(self) -> list[cluster.Member]:
        return [m for m in self.members if m.alive]

    # -- the loop -------------------------------------------------------------------------------------

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await self._register()
        await self._round()  # the first round before we say we are ready: our connections run
        task_status.started()
        # (a clean stop's leave is run_daemon's, once every actor has stopped)
        while True:
            wait = self.settings.renew_interval
            if self.held:  # wake up no later than our deadline
                wait = max(0.0, min(wait, self.deadline - trio.current_time()))
            with trio.move_on_after(wait):
                await self._wake.wait()
            self._wake = trio.Event()
            # first: past our deadline (the database was unreachable, or this process was
            # stopped), nothing of ours may run a moment longer, whatever the next round says
            if self.held and trio.current_time() >= self.deadline:
                await self._lose(list(self.held), "the leases could not be renewed in time")
                # back as a new incarnation: the others hand it connections only after
                # `handover`, so a member that keeps dropping out does not churn them
                self._rejoin = True
            try:
                if self._rejoin:
                    await self._register()
                    self._rejoin = False
                await self._round()
            except StoreUnavailable as exc:
                log.warning("cluster.round_failed", error=str(exc))

    async def _register(self) -> None:
        ttl = self.settings.lease_ttl
        self.id = f"{self.name}#{secrets.token_hex(4)}"
        released = await self.store.call(
            cluster.register, self.id, name=self.name, host=socket.gethostname(), pid=os.getpid(),
            version=__version__, ttl=ttl, predecessor_dead=_pid_gone)
        log.info("cluster.joined", member=self.id, released_from=released or None, lease_ttl=ttl)

    async def _round(self) -> None:
        async with self._lock:
            await self._locked_round()

    async def _locked_round(self) -> None:
        started = trio.current_time()
        runnable = await self.load_ids()
        self._groups = await self.load_groups() if self.load_groups is not None else {}
        self.members = await self.store.call(cluster.members, self.settings.lease_ttl)
        eligible = {m.name for m in self.members
                    if m.alive and (m.age >= self.settings.handover or m.id == self.id)}
        eligible.add(self.name)
        wanted = {cid for cid, name in self._assign(runnable, eligible).items() if name == self.name}
        # give back what a member that has been up long enough should now run (its hand-over)
        settled = {m.name for m in self.members if m.alive and m.age >= self.settings.handover} | {self.name}
        settled_split = self._assign(runnable, settled)
        release = {cid for cid in self.held if settled_split.get(cid) != self.name}
        if release:
            await self._stop(release, abrupt=False)  # their jobs are interrupted at a committed cursor first
        outcome = await self.store.call(
            cluster.lease_round, self.id, ttl=self.settings.lease_ttl, held=dict(self.held), wanted=wanted,
            release=release)
        if not await self.store.call(cluster.heartbeat, self.id):
            await self._lose(list(self.held), "this member was declared gone")
            raise StoreUnavailable("this member's row is gone: re-registering")
        self.deadline = started + self.settings.lease_ttl - DEADLINE_MARGIN
        for cid in release:
            if cid in self.held:
                metrics.cluster_handovers_total.labels("given").inc()
                log.info("cluster.handed_over", connection_id=cid)
        if outcome.lost:
            metrics.cluster_leases_lost_total.inc(len(outcome.lost))
            log.warning("cluster.leases_lost", connections=outcome.lost[:20], count=len(outcome.lost))
            await self._stop(outcome.lost, abrupt=True)
        for cid, late in outcome.took_over.items():
            metrics.cluster_handovers_total.labels("taken").inc()
            metrics.cluster_takeover_seconds.observe(max(0.0, late))
            log.info("cluster.took_over", connection_id=cid, expired_for=round(late, 2))
        self.held = {**outcome.renewed, **outcome.acquired}
        metrics.cluster_members_alive.set(len(self.alive_members()))
        if self.on_members is not None:
            self.on_members(max(1, len(self.alive_members())))
        metrics.cluster_leases_held.set(len(self.held))
        await self.run_owned(self._fences(), set())

    async def _stop(self, connection_ids: Iterable[int], *, abrupt: bool) -> None:
        stopping = set(connection_ids)
        keep = {cid: fence for cid, fence in self._fences().items() if cid not in stopping}
        await self.run_owned(keep, stopping if abrupt else set())

    def _assign(self, ids: set[int], names: set[str]) -> dict[int, str]:
        """`assign`, remembered: between membership changes every round has the same inputs."""
        key = (frozenset(ids), frozenset(names), frozenset(self._groups.items()))
        if key not in self._splits:
            if len(self._splits) > 4:
                self._splits.clear()
            self._splits[key] = assign(ids, names, self._groups)
        return self._splits[key]

    def _fences(self) -> dict[int, Fence]:
        return {cid: Fence(cid, self.id, epoch) for cid, epoch in self.held.items()}

    async def _lose(self, connection_ids: list[int], why: str) -> None:
        log.warning("cluster.stopping_actors", reason=why, connections=len(connection_ids))
        metrics.cluster_leases_lost_total.inc(len(connection_ids))
        for cid in connection_ids:
            self.held.pop(cid, None)
        metrics.cluster_leases_held.set(len(self.held))
        await self._stop(connection_ids, abrupt=True)
