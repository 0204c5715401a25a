"""serve_admin(): the admin Unix socket.

One task per client, in the server's nursery (bounded by max_connections).
Each client sends request lines and gets one reply line per request, in order.

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
from freshd.errors import AdminError, StartupError

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
        info = directory.lstat()
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
            path.unlink(missing_ok=True)  # a socket left by a daemon that died
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
    max_connections: int = 64,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    admin_gid = grp.getgrnam(group).gr_gid if group else None
    rules = rules or AccessRules(admin_gid)
    prepare_socket_path(path)
    listener = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    slots = trio.Semaphore(max_connections)
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
                sock, _ = await listener.accept()
                await slots.acquire()
                nursery.start_soon(_serve_client, sock, handler, rules, request_timeout, slots)
    finally:
        listener.close()
        if bound:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()  # noqa: ASYNC240 - one unlink on the way out


async def _serve_client(
    sock: trio.socket.SocketType, handler: AdminHandler, rules: AccessRules, request_timeout: float,
    slots: trio.Semaphore,
) -> None:
    stream = trio.SocketStream(sock)
    try:
        peer = peer_credentials(sock)
        buffer = bytearray()
        while True:
            newline = buffer.find(b"\n")
            if newline < 0:
                if len(buffer) > MAX_MESSAGE_BYTES:
                    await stream.send_all(error_reply(None, ErrorCode.TOO_LARGE,
                                                      f"request larger than {MAX_MESSAGE_BYTES} bytes"))
                    return
                chunk = await stream.receive_some(65536)
                if not chunk:
                    return
                buffer += chunk
                continue
            line, buffer = bytes(buffer[:newline]), buffer[newline + 1:]
            if line.strip():
                answer = await _answer(line, peer, handler, rules, request_timeout)
                if isinstance(answer, bytes):
                    await stream.send_all(answer)
                else:
                    await _stream_events(stream, *answer)
    except (trio.BrokenResourceError, trio.ClosedResourceError, ConnectionError):
        pass  # the client went away
    finally:
        slots.release()
        with contextlib.suppress(Exception):
            await stream.aclose()


async def _stream_events(stream: trio.SocketStream, request_id: Any, events: AsyncIterator[Any]) -> None:
    """A subscription: one frame per event, then a final reply; ends early if the client leaves."""
    async with contextlib.aclosing(events):  # type: ignore[type-var]
        try:
            async for event in events:
                await stream.send_all(event_frame(request_id, event))
        except AdminError as exc:
            await stream.send_all(error_reply(request_id, exc.code, exc.message))
            return
    await stream.send_all(ok_reply(request_id, {"end": True}))


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
