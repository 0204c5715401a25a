"""freshd.client: a typed client for the admin protocol (docs/CLIENT.md), blocking and on trio.

    Client(socket_path)                 blocking, with the socket module (scripts, freshctl, threads)
    open_client(socket_path)            async context manager on trio -> AsyncClient

Both have the same typed methods, one per admin command (`status()`, `connections()`,
`sync(name, full=...)`, `jobs(connection=...)`, `job(id)`, `pause(id)`, ...), plus `call(cmd,
args)` for anything else; `watch(id)` iterates over a job's progress events until it ends.
Results are the daemon's JSON (dicts), exactly as docs/ARCHITECTURE.md and docs/schemas/ say.

Errors: everything goes wrong as one exception, `ClientError(code, message)`:

    ClientError                 code: the daemon's stable error code (not_found, conflict, forbidden,
    │                           bad_request, timeout, unavailable, internal, ...), or "timeout" when no
    │                           reply came within the client's timeout, or "bad_reply"
    └── Unreachable             code "unreachable": no daemon at that socket, not allowed to connect,
                                or a socket directory someone else owns (refused before connecting)

Each request opens its own connection to the socket (a Unix connect is cheap): no idle
connection holds one of the admin socket's limited seats or meets its idle timeout.

trio is imported by the async client only, when first used: `freshctl` (blocking) starts
without it (a third of a second saved on every call).
"""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from freshd.admin.protocol import API_VERSION, MAX_MESSAGE_BYTES
from freshd.paths import default_socket_path, untrusted_socket_dir

if TYPE_CHECKING:
    import trio

__all__ = ["AsyncClient", "Client", "ClientError", "Unreachable", "open_client"]

DEFAULT_TIMEOUT = 30.0
MAX_REPLY_BYTES = 64 * MAX_MESSAGE_BYTES  # replies (1000 jobs with their progress) may exceed a request's limit
JSON = dict[str, Any]


class ClientError(Exception):
    """The daemon answered with an error, or did not answer: `code` says which (stable strings)."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        self.message = message
        super().__init__(message)


class Unreachable(ClientError):
    """No daemon to talk to at that socket (or not one we may trust); code "unreachable"."""

    def __init__(self, message: str) -> None:
        super().__init__("unreachable", message)


def _request_line(cmd: str, args: dict[str, Any]) -> bytes:
    payload = {"v": API_VERSION, "id": 1, "cmd": cmd, "args": {k: v for k, v in args.items() if v is not None}}
    return json.dumps(payload).encode() + b"\n"


def _check_socket_dir(path: Path) -> None:
    """Refuse a socket in a /tmp directory someone else made: what we send (credentials) would be theirs."""
    if (problem := untrusted_socket_dir(path)) is not None:
        raise Unreachable(f"refusing to connect: {problem}")


def _unreachable(path: Path, exc: OSError) -> Unreachable:
    if isinstance(exc, PermissionError):
        return Unreachable(f"permission denied on {path}: are you in freshd's admin group?")
    if isinstance(exc, FileNotFoundError | ConnectionRefusedError):
        return Unreachable(f"freshd is not running (no socket at {path})")
    return Unreachable(f"cannot connect to {path}: {exc.strerror or exc}")


def _frame(line: bytes) -> JSON:
    try:
        frame = json.loads(line)
    except ValueError:
        raise ClientError("bad_reply", f"freshd sent a line that is not JSON: {line[:80]!r}") from None
    if not isinstance(frame, dict):
        raise ClientError("bad_reply", "freshd sent a reply that is not an object")
    return frame


def _result(frame: JSON) -> Any:
    """The result of a final reply frame, or its error raised."""
    if frame.get("ok"):
        return frame.get("result")
    error = frame.get("error") or {}
    raise ClientError(str(error.get("code", "internal")), str(error.get("message", "unknown error")))


def _job_args(job_id: int) -> JSON:
    return {"id": job_id}


class Client:
    """A blocking client: `Client("/run/freshd/admin.sock").status()`."""

    def __init__(self, socket_path: str | Path | None = None, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.socket_path = Path(socket_path) if socket_path is not None else default_socket_path()
        self.timeout = timeout

    def _connect(self) -> socket.socket:
        _check_socket_dir(self.socket_path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(str(self.socket_path))
        except TimeoutError as exc:
            sock.close()
            raise ClientError("timeout", f"freshd did not accept the connection within {self.timeout:g} s") from exc
        except OSError as exc:
            sock.close()
            raise _unreachable(self.socket_path, exc) from exc
        return sock

    def call(self, cmd: str, args: JSON | None = None) -> Any:
        """Send one request; return its result or raise ClientError."""
        with self._connect() as sock:
            try:
                sock.sendall(_request_line(cmd, args or {}))
                data = b""
                while not data.endswith(b"\n"):
                    chunk = sock.recv(1 << 16)
                    if not chunk:
                        break
                    data += chunk
            except TimeoutError as exc:
                raise ClientError("timeout", f"no reply from freshd within {self.timeout:g} s") from exc
            except OSError as exc:
                raise Unreachable(f"freshd closed the connection at {self.socket_path}: {exc}") from exc
        if not data:
            raise Unreachable(f"freshd closed the connection at {self.socket_path}")
        return _result(_frame(data))

    def stream(self, cmd: str, args: JSON | None = None) -> Iterator[Any]:
        """A subscription: yield each event until the daemon's final reply (no timeout once it runs)."""
        sock = self._connect()
        with sock, sock.makefile("rb") as lines:
            try:
                sock.sendall(_request_line(cmd, args or {}))
            except OSError as exc:
                raise Unreachable(f"freshd closed the connection at {self.socket_path}: {exc}") from exc
            sock.settimeout(None)  # a watch lasts as long as the job
            for line in lines:
                frame = _frame(line)
                if "event" in frame:
                    yield frame["event"]
                else:
                    _result(frame)
                    return
        raise Unreachable(f"freshd closed the connection at {self.socket_path} during {cmd}")

    _call = call

    # -- the commands (the same list in AsyncClient) ------------------------------------------------

    def status(self) -> JSON:
        return self._call("status", {})  # type: ignore[no-any-return]

    def connections(self) -> list[JSON]:
        return self._call("connections.list", {})["connections"]  # type: ignore[no-any-return]

    def connection(self, name: str) -> JSON:
        return self._call("connections.show", {"name": name})  # type: ignore[no-any-return]

    def sync(self, name: str, *, full: bool = False, force: bool = False, confirm_deletes: bool = False,
             entities: list[str] | None = None, since: str | None = None, dry_run: bool = False) -> JSON:
        return self._call("sync", {"name": name, "full": full, "force": force,  # type: ignore[no-any-return]
                                   "confirm_deletes": confirm_deletes, "entities": entities, "since": since,
                                   "dry_run": dry_run})

    def ensure(self, name: str) -> JSON:
        return self._call("ensure", {"name": name})  # type: ignore[no-any-return]

    def jobs(self, *, connection: str | None = None, tenant: str | None = None, status: str | None = None,
             limit: int = 50, offset: int = 0) -> JSON:
        return self._call("jobs", {"connection": connection, "tenant": tenant,  # type: ignore[no-any-return]
                                   "status": status, "limit": limit, "offset": offset})

    def job(self, job_id: int) -> JSON:
        return self._call("job", _job_args(job_id))  # type: ignore[no-any-return]

    def pause(self, job_id: int) -> JSON:
        return self._call("pause", _job_args(job_id))  # type: ignore[no-any-return]

    def resume(self, job_id: int) -> JSON:
        return self._call("resume", _job_args(job_id))  # type: ignore[no-any-return]

    def cancel(self, job_id: int) -> JSON:
        return self._call("cancel", _job_args(job_id))  # type: ignore[no-any-return]

    def retry(self, job_id: int) -> JSON:
        return self._call("retry", _job_args(job_id))  # type: ignore[no-any-return]

    def health(self) -> JSON:
        return self._call("health", {})  # type: ignore[no-any-return]

    def watch(self, job_id: int | None = None, *, all: bool = False) -> Iterator[JSON]:
        """Progress events ({"job": {...}}) of one job until it ends, or of every job (`all`)."""
        return self.stream("watch", {"id": job_id, "all": all or None})


class AsyncClient:
    """The same client on trio; made by `open_client`."""

    def __init__(self, socket_path: Path, timeout: float) -> None:
        self.socket_path = socket_path
        self.timeout = timeout

    async def _connect(self) -> trio.SocketStream:
        import trio  # here, not at the top: see the module docstring

        _check_socket_dir(self.socket_path)
        try:
            return await trio.open_unix_socket(str(self.socket_path))
        except OSError as exc:
            raise _unreachable(self.socket_path, exc) from exc

    async def call(self, cmd: str, args: JSON | None = None) -> Any:
        """Send one request; return its result or raise ClientError."""
        import trio  # here, not at the top: see the module docstring

        try:
            with trio.fail_after(self.timeout):
                stream = await self._connect()
                async with stream:
                    await stream.send_all(_request_line(cmd, args or {}))
                    line = await _receive_line(stream, bytearray())
        except trio.TooSlowError:
            raise ClientError("timeout", f"no reply from freshd within {self.timeout:g} s") from None
        except (trio.BrokenResourceError, OSError) as exc:
            raise Unreachable(f"freshd closed the connection at {self.socket_path}: {exc}") from exc
        if line is None:
            raise Unreachable(f"freshd closed the connection at {self.socket_path}")
        return _result(_frame(line))

    async def stream(self, cmd: str, args: JSON | None = None) -> AsyncIterator[Any]:
        """A subscription: yield each event until the daemon's final reply."""
        import trio  # here, not at the top: see the module docstring

        try:
            with trio.fail_after(self.timeout):
                stream = await self._connect()
        except trio.TooSlowError:
            raise ClientError("timeout", f"cannot connect to freshd within {self.timeout:g} s") from None
        async with stream:
            buffer = bytearray()
            try:
                await stream.send_all(_request_line(cmd, args or {}))
                while (line := await _receive_line(stream, buffer)) is not None:
                    frame = _frame(line)
                    if "event" not in frame:
                        _result(frame)
                        return
                    yield frame["event"]
            except (trio.BrokenResourceError, OSError) as exc:
                raise Unreachable(f"freshd closed the connection at {self.socket_path}: {exc}") from exc
        raise Unreachable(f"freshd closed the connection at {self.socket_path} during {cmd}")

    _call = call

    async def status(self) -> JSON:
        return await self._call("status", {})  # type: ignore[no-any-return]

    async def connections(self) -> list[JSON]:
        return (await self._call("connections.list", {}))["connections"]  # type: ignore[no-any-return]

    async def connection(self, name: str) -> JSON:
        return await self._call("connections.show", {"name": name})  # type: ignore[no-any-return]

    async def sync(self, name: str, *, full: bool = False, force: bool = False, confirm_deletes: bool = False,
                   entities: list[str] | None = None, since: str | None = None, dry_run: bool = False) -> JSON:
        return await self._call("sync", {  # type: ignore[no-any-return]
            "name": name, "full": full, "force": force, "confirm_deletes": confirm_deletes,
            "entities": entities, "since": since, "dry_run": dry_run})

    async def ensure(self, name: str) -> JSON:
        return await self._call("ensure", {"name": name})  # type: ignore[no-any-return]

    async def jobs(self, *, connection: str | None = None, tenant: str | None = None, status: str | None = None,
                   limit: int = 50, offset: int = 0) -> JSON:
        return await self._call("jobs", {"connection": connection,  # type: ignore[no-any-return]
                                         "tenant": tenant, "status": status, "limit": limit, "offset": offset})

    async def job(self, job_id: int) -> JSON:
        return await self._call("job", _job_args(job_id))  # type: ignore[no-any-return]

    async def pause(self, job_id: int) -> JSON:
        return await self._call("pause", _job_args(job_id))  # type: ignore[no-any-return]

    async def resume(self, job_id: int) -> JSON:
        return await self._call("resume", _job_args(job_id))  # type: ignore[no-any-return]

    async def cancel(self, job_id: int) -> JSON:
        return await self._call("cancel", _job_args(job_id))  # type: ignore[no-any-return]

    async def retry(self, job_id: int) -> JSON:
        return await self._call("retry", _job_args(job_id))  # type: ignore[no-any-return]

    async def health(self) -> JSON:
        return await self._call("health", {})  # type: ignore[no-any-return]

    def watch(self, job_id: int | None = None, *, all: bool = False) -> AsyncIterator[JSON]:
        """Progress events ({"job": {...}}) of one job until it ends, or of every job (`all`):
        ``async for event in client.watch(7): ...``."""
        return self.stream("watch", {"id": job_id, "all": all or None})


async def _receive_line(stream: trio.SocketStream, buffer: bytearray) -> bytes | None:
    """The next line from `stream` (buffered in `buffer`), or None when the daemon hung up first."""
    while (newline := buffer.find(b"\n")) < 0:
        if len(buffer) > MAX_REPLY_BYTES:
            raise ClientError("bad_reply", f"freshd sent a line longer than {MAX_REPLY_BYTES} bytes")
        chunk = await stream.receive_some(1 << 16)
        if not chunk:
            return None
        buffer += chunk
    line = bytes(buffer[:newline])
    del buffer[:newline + 1]
    return line


@asynccontextmanager
async def open_client(socket_path: str | Path | None = None, *,
                      timeout: float = DEFAULT_TIMEOUT) -> AsyncIterator[AsyncClient]:  # noqa: ASYNC109
    """``async with open_client(path) as client: await client.status()`` (on trio).

    Raises Unreachable at once if the socket's directory cannot be trusted; each request then
    opens its own connection (see the module docstring); `timeout` bounds each request (a watch:
    its connection), not the client's life."""
    path = Path(socket_path) if socket_path is not None else default_socket_path()
    _check_socket_dir(path)
    yield AsyncClient(path, timeout)
