"""The daemon's side of the admin API: every command, dispatched, and forwarded to its owner.

The server (admin/server.py) has already parsed and type-checked the request
against the schemas in admin/protocol.py; the command groups apply the daemon's rules
(known provider, valid URL, config-owned connections are read-only) and
answer with plain JSON.  A rule broken raises AdminError and changes nothing.

`DaemonAdmin` is the handler: its table joins the groups (admin/connections.py, jobs.py,
health.py, tokens.py, consumers.py, twoway.py); a command about a connection another member
runs goes to that member through the database, and this one runs what others forward to it.
"""

from __future__ import annotations

import contextlib
import itertools
from typing import TYPE_CHECKING, Any

import structlog
import trio

from freshd.admin.connections import ConnectionCommands
from freshd.admin.consumers import ConsumerCommands
from freshd.admin.health import HealthCommands
from freshd.admin.jobs import JobCommands
from freshd.admin.lookups import Handler
from freshd.admin.protocol import Caller, ErrorCode, Peer, Request
from freshd.admin.tokens import TokenCommands
from freshd.admin.twoway import TwoWayCommands
from freshd.errors import AdminError, StoreUnavailable
from freshd.store import cluster, connections, jobs
from freshd.store.db import Listener

if TYPE_CHECKING:
    from freshd.admin.host import AdminHost

log = structlog.get_logger(__name__)

# commands about one connection that its owner runs: another member forwards them
FORWARDED = frozenset({"sync", "ensure", "retry", "pause", "resume", "cancel", "connections.set_credential",
                       "connections.remove"})
FORWARD_POLL = 0.05  # seconds between two looks for the owner's reply
FORWARD_IDLE = 1.0  # the owner looks for forwarded commands at least this often


class DaemonAdmin:
    """Implements AdminHandler for the running daemon."""

    def __init__(self, daemon: AdminHost) -> None:
        self.daemon = daemon
        self._commands: dict[str, Handler] = {
            **ConnectionCommands(daemon).handlers(),
            **JobCommands(daemon).handlers(),
            **HealthCommands(daemon).handlers(),
            **TokenCommands(daemon).handlers(),
            **ConsumerCommands(daemon).handlers(),
            **TwoWayCommands(daemon).handlers(),
        }

    async def handle(self, request: Request, caller: Caller) -> Any:
        command = self._commands.get(request.cmd)
        if command is None:
            raise AdminError(ErrorCode.UNKNOWN_COMMAND, f"unknown command {request.cmd!r}")
        try:
            if request.cmd in FORWARDED and (owner := await self._owner_elsewhere(request, caller)) is not None:
                return await self._forward(owner, request, caller)
            return await command(dict(request.args), caller)
        except StoreUnavailable as exc:
            raise AdminError(ErrorCode.UNAVAILABLE, f"the database is unavailable: {exc}") from None

    # -- commands for connections another member runs ----------------------------------------------

    async def _owner_elsewhere(self, request: Request, caller: Caller) -> str | None:
        """The member running the connection this command is about, if it is not this one."""
        membership = self.daemon.membership
        if membership is None:
            return None
        args = request.args
        if "name" in args:
            row = await self.daemon.store.call(connections.get_connection, args["name"], self.daemon.store.keyring)
            visible = row is not None and caller.sees(row.tenant)
            connection_id = row.id if row is not None else None
        else:
            job = await self.daemon.store.call(jobs.get_job, args["id"])
            visible = job is not None and caller.sees(job.tenant)
            connection_id = job.connection_id if job is not None else None
        if not visible or connection_id is None or membership.owns(connection_id):
            return None  # answered here: not found, or ours
        owner = (await self.daemon.store.call(cluster.owners)).get(connection_id)
        return owner if owner not in (None, membership.id) else None

    async def _forward(self, owner: str, request: Request, caller: Caller) -> Any:
        """Through the database to the owner (a command row and a NOTIFY); its answer is ours."""
        forwarded = {"cmd": request.cmd, "args": request.args,
                     "caller": {"pid": caller.peer.pid, "uid": caller.peer.uid, "gid": caller.peer.gid,
                                "tenants": None if caller.tenants is None else sorted(caller.tenants),
                                "token_id": caller.token_id}}
        command_id = await self.daemon.store.call(cluster.post_command, owner, forwarded)
        with trio.move_on_after(max(1.0, self.daemon.config.admin.request_timeout - 1.0)):
            reply = None
            for _ in itertools.count():  # until the owner answers or the request times out
                if (reply := await self.daemon.store.call(cluster.command_reply, command_id)) is not None:
                    break
                await trio.sleep(FORWARD_POLL)
            assert reply is not None
            if reply.get("ok"):
                return reply.get("result")
            error = reply.get("error") or {}
            raise AdminError(str(error.get("code", ErrorCode.INTERNAL)), str(error.get("message", "")))
        raise AdminError(ErrorCode.TIMEOUT, f"member {owner} runs this connection and did not answer in time")

    async def serve_forwarded(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the commands other members forward to this one, woken by LISTEN/NOTIFY (and a poll
        every FORWARD_IDLE seconds, should a notification be lost with its connection)."""
        membership = self.daemon.membership
        assert membership is not None
        listener = Listener(self.daemon.store.url, "freshd_commands")
        async with listener:
            task_status.started()
            while True:
                await listener.wait_for(FORWARD_IDLE)
                try:  # the member's id changes when it rejoins: read it each time
                    pending = await self.daemon.store.call(cluster.pending_commands, membership.id)
                except StoreUnavailable:
                    continue
                for command_id, forwarded in pending:
                    reply = await self._run_forwarded(forwarded)
                    with contextlib.suppress(StoreUnavailable):
                        await self.daemon.store.call(cluster.answer_command, command_id, reply)

    async def _run_forwarded(self, forwarded: dict[str, Any]) -> dict[str, Any]:
        who = forwarded.get("caller") or {}
        tenants = who.get("tenants")
        caller = Caller(Peer(int(who.get("pid", 0)), int(who.get("uid", -1)), int(who.get("gid", -1))),
                        None if tenants is None else frozenset(tenants), who.get("token_id"))
        command = self._commands.get(str(forwarded.get("cmd")))
        try:
            if command is None or forwarded.get("cmd") not in FORWARDED:
                raise AdminError(ErrorCode.BAD_REQUEST, f"command {forwarded.get('cmd')!r} cannot be forwarded")
            return {"ok": True, "result": await command(dict(forwarded.get("args") or {}), caller)}
        except AdminError as exc:
            return {"ok": False, "error": {"code": exc.code, "message": exc.message}}
        except StoreUnavailable as exc:
            return {"ok": False, "error": {"code": ErrorCode.UNAVAILABLE,
                                           "message": f"the database is unavailable: {exc}"}}
        except Exception:
            log.exception("admin.forwarded_failed", cmd=forwarded.get("cmd"))
            return {"ok": False, "error": {"code": ErrorCode.INTERNAL,
                                           "message": "internal error (see the owner's log)"}}
