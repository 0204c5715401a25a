"""serve_admin(): the admin Unix socket.

One task per client, in the server's nursery. Each client sends request lines
and gets one reply line per request, in order.

Limits (so no user can lock the others out): at most `max_connections` clients,
`max_connections_per_uid` of them per uid, and the last ADMIN_RESERVED_CONNECTIONS
seats for root and the daemon's uid only. Over a limit, a new connection gets
one `unavailable` line and is closed; it never waits. A client with no complete
request line within `idle_timeout` is closed (`timeout`), and so is one that
stops reading replies for as long. A `watch` whose client hangs up ends at once.

Error handling: malformed JSON, bad arguments and unknown commands get their
error code and the connection stays usable; an oversize line gets `too_large`
and the connection is closed (framing is lost).  A handler that exceeds the
request timeout gets `timeout`; an unexpected exception gets `internal` (logged
here with its traceback, never sent to the client).  Nothing a client does
reaches another client or the daemon.

Authorization (SO_PEERCRED): root, the daemon's own uid, and members of the
admin group may call; everyone else gets `forbidden`.
"""

from __future__ import annotations

import contextlib
import errno
import grp
import os
import pwd
import socket as stdlib_socket
import stat
import struct
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import structlog
import trio

from freshd import paths
from freshd.admin.protocol import (
    MAX_MESSAGE_BYTES,
    Caller,
    ErrorCode,
    Peer,
    Request,
    error_reply,
    event_frame,
    ok_reply,
    parse_request,
)
from freshd.config_model import ADMIN_RESERVED_CONNECTIONS
from freshd.errors import AdminError, StartupError, StoreUnavailable

log = structlog.get_logger(__name__)


class AdminHandler(Protocol):
    async def handle(self, request: Request, caller: Caller) -> Any: ...


def peer_credentials(sock: trio.socket.SocketType) -> Peer:
    raw = sock.getsockopt(stdlib_socket.SOL_SOCKET, stdlib_socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return Peer(pid, uid, gid)


@dataclass(frozen=True, slots=True)
class AccessRules:
    """Resolved at start: the admin group, and tenant -> (user names, group ids)."""

    admin_gid: int | None = None
    tenants: Mapping[str, tuple[frozenset[str], frozenset[int]]] = field(default_factory=dict)

    @classmethod
    def from_config(cls, admin_group: str | None, tenants: Mapping[str, Any]) -> AccessRules:
        resolved = {}
        for tenant, access in tenants.items():
            gids = set()
            for name in access.groups:
                try:
                    gids.add(grp.getgrnam(name).gr_gid)
                except KeyError:
                    log.warning("admin.unknown_group", tenant=tenant, group=name)
            resolved[tenant] = (frozenset(access.users), frozenset(gids))
        return cls(grp.getgrnam(admin_group).gr_gid if admin_group else None, resolved)


def _groups_of(peer: Peer) -> tuple[str | None, set[int]]:
    try:
        name = pwd.getpwuid(peer.uid).pw_name
    except KeyError:
        return None, {peer.gid}
    return name, {peer.gid, *os.getgrouplist(name, peer.gid)}


def authorize(peer: Peer, rules: AccessRules) -> Caller:
    """The one place that decides who may call: everything, some tenants, or `forbidden`.

    Root, the daemon's own uid and members of the admin group see every tenant; users or
    groups mapped to tenants (config `[admin.tenants.NAME]`) see those tenants only.
    """
    if peer.uid in (0, os.geteuid()):
        return Caller(peer)
    name, gids = _groups_of(peer)
    if rules.admin_gid is not None and rules.admin_gid in gids:
        return Caller(peer)
    tenants = frozenset(t for t, (users, groups) in rules.tenants.items() if name in users or gids & groups)
    if tenants:
        return Caller(peer, tenants)
    raise AdminError(ErrorCode.FORBIDDEN, f"uid {peer.uid} may not use freshd's admin socket (not root, the "
                                          "daemon's user, in its admin group, or mapped to a tenant)")


REFUSAL_GRACE = 1.0  # a refused client gets this long to send its request before the close


class Seats:
    """Who holds the admin connections: a total, a cap per uid, and a few kept for root and the daemon.

    Nobody waits for a seat: over a limit, the connection is refused at once. Root and the
    daemon's own uid have no per-uid cap (they own the daemon anyway) and may take the
    reserved seats, so no other user, however many connections it opens, locks them out.
    """

    def __init__(self, total: int, per_uid: int, reserved: int = ADMIN_RESERVED_CONNECTIONS) -> None:
        self.total = total
        self.per_uid = per_uid
        self.reserved = min(reserved, total - 1)
        self.in_use = 0
        self._by_uid: dict[int, int] = {}

    def take_nowait(self, uid: int) -> str | None:
        """Take a seat for `uid`: None if taken, else why not (one line for the client)."""
        privileged = uid in (0, os.geteuid())
        held = self._by_uid.get(uid, 0)
        if not privileged and held >= self.per_uid:
            return f"uid {uid} already has {held} admin connections open, the most one user may; close some"
        if self.in_use >= (self.total if privileged else self.total - self.reserved):
            return "every admin connection is taken; try again later"
        self.in_use += 1
        self._by_uid[uid] = held + 1
        return None

    def release(self, uid: int) -> None:
        self.in_use -= 1
        held = self._by_uid.pop(uid) - 1
        if held:
            self._by_uid[uid] = held


def prepare_socket_path(path: Path) -> None:
    """Make `path` ready to bind, or raise StartupError saying why it cannot be.

    The directory is created if missing (mode 0700 inside a shared directory like /tmp,
    where it must also be ours and private, or another user could take our place).
    Only a socket left by a daemon that died is ever removed: anything else at `path`
    is refused, never deleted.
    """
    directory = path.parent
    shared = paths.in_shared_dir(directory)
    try:
        directory.mkdir(mode=0o700 if shared else 0o777, parents=True, exist_ok=True)
        info = directory.lstat() if shared else directory.stat()  # in /tmp, a link is someone's trap
    except OSError as exc:
        raise StartupError(f"cannot use {directory} for the admin socket: {exc.strerror or exc}") from None
    if not stat.S_ISDIR(info.st_mode):
        raise StartupError(f"cannot use {directory} for the admin socket: not a directory")
    if info.st_uid not in (os.geteuid(), 0) or (shared and info.st_uid != os.geteuid()):
        raise StartupError(f"refusing {directory} for the admin socket: it belongs to uid {info.st_uid}, "
                           f"not to freshd's uid {os.geteuid()}; remove it or choose another runtime_dir")
    if shared and stat.S_IMODE(info.st_mode) & 0o077:
        raise StartupError(f"refusing {directory} for the admin socket: mode "
                           f"{stat.S_IMODE(info.st_mode):04o} lets other users in; it must be 0700")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise StartupError(f"cannot create the admin socket in {directory}: not writable")
    try:
        existing = path.lstat()
    except FileNotFoundError:
        return
    except OSError as exc:
        raise StartupError(f"cannot use {path} for the admin socket: {exc.strerror or exc}") from None
    if not stat.S_ISSOCK(existing.st_mode):
        raise StartupError(f"refusing {path} for the admin socket: it exists and is not a socket "
                           "(it is left alone; remove it or choose another path)")
    probe = stdlib_socket.socket(stdlib_socket.AF_UNIX, stdlib_socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError as exc:
        if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
            try:
                path.unlink(missing_ok=True)  # a socket left by a daemon that died
            except OSError as unlink_error:
                raise StartupError(f"cannot remove the stale socket {path}: "
                                   f"{unlink_error.strerror or unlink_error}") from None
            return
        raise StartupError(f"cannot use {path} for the admin socket: {exc.strerror or exc}") from None
    else:
        raise StartupError(f"another freshd is already listening on {path}")
    finally:
        probe.close()


async def serve_admin(
    path: Path,
    handler: AdminHandler,
    *,
    mode: int = 0o660,
    group: str | None = None,
    rules: AccessRules | None = None,
    request_timeout: float = 30.0,
    idle_timeout: float = 60.0,
    max_connections: int = 64,
    max_connections_per_uid: int = 16,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    admin_gid = grp.getgrnam(group).gr_gid if group else None
    rules = rules or AccessRules(admin_gid)
    prepare_socket_path(path)
    listener = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    seats = Seats(max_connections, max_connections_per_uid)
    service = _Service(handler, rules, request_timeout, idle_timeout, seats)
    bound = False
    try:
        try:
            await listener.bind(str(path))
            bound = True
            os.chmod(path, mode)
            if admin_gid is not None:
                os.chown(path, -1, admin_gid)
        except OSError as exc:
            raise StartupError(f"cannot create the admin socket {path}: {exc.strerror or exc}") from None
        listener.listen(max_connections)
        async with trio.open_nursery() as nursery:
            task_status.started()
            log.info("admin.listening", socket=str(path))
            while True:
                # never wait here for a seat: one busy user must not stall everyone's accept
                sock, _ = await listener.accept()
                try:
                    peer = peer_credentials(sock)
                except OSError:
                    sock.close()
                    continue
                refusal = seats.take_nowait(peer.uid)
                if refusal is not None:
                    log.debug("admin.refused", peer_uid=peer.uid, reason=refusal)
                    nursery.start_soon(_refuse, sock, refusal)
                else:
                    nursery.start_soon(_serve_client, sock, peer, service)
    finally:
        listener.close()
        if bound:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()  # noqa: ASYNC240 - one unlink on the way out


# the client went away, or stopped reading for longer than the idle timeout
_GONE = (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError, ConnectionError)


async def _refuse(sock: trio.socket.SocketType, message: str) -> None:
    """One `unavailable` line, then close; the client's request is read first (briefly) so the
    close does not reset the connection before the client has read why."""
    stream = trio.SocketStream(sock)
    with trio.move_on_after(REFUSAL_GRACE), contextlib.suppress(*_GONE, OSError):
        await stream.send_all(error_reply(None, ErrorCode.UNAVAILABLE, message))
        await stream.receive_some(65536)
    with contextlib.suppress(Exception):
        await stream.aclose()


async def _send(stream: trio.SocketStream, data: bytes, seconds: float) -> None:
    with trio.fail_after(seconds):  # a client that stops reading does not keep its seat forever
        await stream.send_all(data)


async def _next_request(stream: trio.SocketStream, buffer: bytearray) -> bytes | None:
    """The next non-blank line (its newline removed), or None when the client has finished."""
    while True:
        newline = buffer.find(b"\n")
        if newline < 0:
            if len(buffer) > MAX_MESSAGE_BYTES:
                raise AdminError(ErrorCode.TOO_LARGE, f"request larger than {MAX_MESSAGE_BYTES} bytes")
            chunk = await stream.receive_some(65536)
            if not chunk:
                return None
            buffer += chunk
            continue
        line = bytes(buffer[:newline])
        del buffer[:newline + 1]
        if line.strip():
            return line


@dataclass(frozen=True, slots=True)
class _Service:
    """What every client's task shares."""

    handler: AdminHandler
    rules: AccessRules
    request_timeout: float
    idle_timeout: float
    seats: Seats


async def _serve_client(sock: trio.socket.SocketType, peer: Peer, service: _Service) -> None:
    idle_timeout = service.idle_timeout
    stream = trio.SocketStream(sock)
    try:
        buffer = bytearray()
        while True:
            # one deadline for the whole line: an idle client and one dripping bytes both lose their seat
            line: bytes | None = None
            with trio.move_on_after(idle_timeout) as idle:
                try:
                    line = await _next_request(stream, buffer)
                except AdminError as exc:
                    await _send(stream, error_reply(None, exc.code, exc.message), idle_timeout)
                    return  # framing is lost
            if idle.cancelled_caught:
                await _send(stream, error_reply(None, ErrorCode.TIMEOUT,
                                                f"no request within {idle_timeout:g} s; closing"), 1.0)
                return
            if line is None:
                return
            answer = await _answer(line, peer, service.handler, service.rules, service.request_timeout)
            if isinstance(answer, bytes):
                await _send(stream, answer, idle_timeout)
            elif not await _stream_events(stream, buffer, idle_timeout, *answer):
                return
    except _GONE:
        pass
    finally:
        service.seats.release(peer.uid)
        with contextlib.suppress(Exception):
            await stream.aclose()


async def _stream_events(
    stream: trio.SocketStream, buffer: bytearray, send_timeout: float, request_id: Any, events: AsyncIterator[Any]
) -> bool:
    """A subscription: one frame per event, then a final reply. Returns False if the client left.

    The socket is read meanwhile: a client that hangs up ends its subscription at once, even
    when no event is due (its seat would otherwise stay taken until the next event). Lines it
    sends during the subscription wait in `buffer` for their turn.
    """
    gone = False

    async def end_on_hangup(scope: trio.CancelScope) -> None:
        nonlocal gone
        try:
            while len(buffer) <= MAX_MESSAGE_BYTES:  # past that, the main loop answers too_large
                chunk = await stream.receive_some(65536)
                if not chunk:
                    gone = True
                    break
                buffer.extend(chunk)
        except _GONE:
            gone = True
        scope.cancel()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(end_on_hangup, nursery.cancel_scope)
        try:
            await _send_events(stream, send_timeout, request_id, events)
        except _GONE:
            gone = True
        nursery.cancel_scope.cancel()
    return not gone


async def _send_events(stream: trio.SocketStream, send_timeout: float, request_id: Any,
                       events: AsyncIterator[Any]) -> None:
    async with contextlib.aclosing(events):  # type: ignore[type-var]
        try:
            async for event in events:
                await _send(stream, event_frame(request_id, event), send_timeout)
        except AdminError as exc:
            await _send(stream, error_reply(request_id, exc.code, exc.message), send_timeout)
            return
        except StoreUnavailable as exc:
            await _send(stream, error_reply(request_id, ErrorCode.UNAVAILABLE,
                                            f"the database is unavailable: {exc}"), send_timeout)
            return
    await _send(stream, ok_reply(request_id, {"end": True}), send_timeout)


async def _answer(
    line: bytes, peer: Peer, handler: AdminHandler, rules: AccessRules, request_timeout: float
) -> bytes | tuple[Any, AsyncIterator[Any]]:
    request_id: Any = None
    try:
        request = parse_request(line)
        request_id = request.id
        caller = authorize(peer, rules)
        with trio.fail_after(request_timeout):
            result = await handler.handle(request, caller)
        if hasattr(result, "__aiter__"):
            return request_id, result  # a subscription: streamed by the caller, no timeout
        return ok_reply(request_id, result)
    except AdminError as exc:
        return error_reply(request_id, exc.code, exc.message)
    except trio.TooSlowError:
        return error_reply(request_id, ErrorCode.TIMEOUT, f"no answer within {request_timeout:g} s")
    except Exception:
        log.exception("admin.internal_error", peer_uid=peer.uid)
        return error_reply(request_id, ErrorCode.INTERNAL, "internal error (see the daemon's log)")
