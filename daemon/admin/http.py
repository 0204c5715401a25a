"""serve_http_api(): the admin commands over HTTP, for web applications (docs/HTTP.md).

One implementation, two transports: a route names an admin command; its path, query and JSON
body become the command's arguments, checked by the same `parse_request` as a socket line, and
`AdminHandler.handle` answers with a Caller scoped to the bearer token's tenant.  The result is
the response body as is; an AdminError is ``{"error": {"code", "message"}}`` with the status
HTTP_STATUS gives its code.

    GET  /api/v1/connections                      connections.list
    GET  /api/v1/connections/{name}               connections.show
    POST /api/v1/connections/{name}/sync          sync      (JSON body: full, force, entities, ...)
    POST /api/v1/connections/{name}/ensure        ensure
    GET  /api/v1/jobs[?connection&status&limit&offset]  jobs
    GET  /api/v1/jobs/{id}                        job
    POST /api/v1/jobs/{id}/pause|resume|cancel    pause, resume, cancel
    GET  /api/v1/jobs/{id}/events                 watch, as Server-Sent Events
    GET  /api/v1/health                           health

Order of checks: the route (404, 405), the token (401), the body (413, 400), the arguments
(400), then the command; each refusal changes nothing.  Events: one ``event: job`` per
progress update, each with an ``id:`` (the job's status and work done, see `event_id`), a
comment every HEARTBEAT seconds, and the end of the stream when the job ends.  A client
reconnecting with ``Last-Event-ID`` does not get the state it last saw again; one that saw the
job's final state gets 204 (which tells an EventSource to stop reconnecting).

Error handling: a handler over the request timeout is 504 `timeout`; an unexpected exception
is 500 `internal` (logged here with its traceback, never sent).  Served by hypercorn on trio
(freshd.asgi), like the metrics endpoint.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

import orjson
import structlog
import trio

from freshd.addresses import split_host_port
from freshd.admin.protocol import API_VERSION, HTTP_PEER, Caller, ErrorCode, parse_request
from freshd.admin.server import AdminHandler
from freshd.asgi import acknowledge_lifespan, serve_asgi
from freshd.errors import AdminError, StoreUnavailable
from freshd.store import Store, tokens

log = structlog.get_logger(__name__)

PREFIX = "/api/v1"
HEARTBEAT = 15.0  # seconds between keep-alive comments on an idle event stream (proxies cut silent ones)
MAX_STREAMS = 256  # event streams open at once; one more gets 503
FINISHED_STATUSES = frozenset({"completed", "partial", "failed", "cancelled"})  # a stream's last event

# admin error codes -> HTTP statuses (and the API's own: unauthorized, method_not_allowed)
HTTP_STATUS: dict[str, int] = {
    ErrorCode.BAD_JSON: 400,
    ErrorCode.BAD_REQUEST: 400,
    ErrorCode.UNSUPPORTED_VERSION: 400,
    ErrorCode.TOO_LARGE: 413,
    ErrorCode.UNKNOWN_COMMAND: 404,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.CONFLICT: 409,
    ErrorCode.TIMEOUT: 504,
    ErrorCode.UNAVAILABLE: 503,
    ErrorCode.INTERNAL: 500,
    "unauthorized": 401,
    "method_not_allowed": 405,
}

Authenticate = Callable[[str], Awaitable[Caller | None]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
Receive = Callable[[], Awaitable[dict[str, Any]]]


@dataclass(frozen=True, slots=True)
class Route:
    """A method and path pattern, the admin command it runs, and where its arguments come from."""

    method: str
    pattern: re.Pattern[str]
    cmd: str
    query: tuple[str, ...] = ()  # query parameters taken as arguments
    body: bool = False  # a JSON object body gives the command's other arguments
    accepted: Callable[[Any], bool] | None = None  # 202 instead of 200 when true of the result
    stream: bool = False  # a subscription, sent as Server-Sent Events


def _path(template: str) -> re.Pattern[str]:
    """"/jobs/{id}/events" -> a pattern with named groups (a segment: no '/')."""
    return re.compile("^" + PREFIX + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", template) + "$")


ROUTES: tuple[Route, ...] = (
    Route("GET", _path("/connections"), "connections.list"),
    Route("GET", _path("/connections/{name}"), "connections.show"),
    Route("POST", _path("/connections/{name}/sync"), "sync", body=True, accepted=lambda r: bool(r.get("created"))),
    Route("POST", _path("/connections/{name}/ensure"), "ensure", accepted=lambda r: bool(r.get("queued"))),
    Route("GET", _path("/jobs"), "jobs", query=("connection", "status", "limit", "offset")),
    Route("GET", _path("/jobs/{id}"), "job"),
    Route("POST", _path("/jobs/{id}/pause"), "pause", accepted=lambda r: True),
    Route("POST", _path("/jobs/{id}/resume"), "resume", accepted=lambda r: True),
    Route("POST", _path("/jobs/{id}/cancel"), "cancel", accepted=lambda r: True),
    Route("GET", _path("/jobs/{id}/events"), "watch", stream=True),
    Route("GET", _path("/health"), "health"),
    # two-way sync (docs/TWO-WAY.md)
    Route("GET", _path("/pairs"), "pairs.list"),
    Route("POST", _path("/pairs/{pair}/runs"), "twoway.start", body=True, accepted=lambda r: True),
    Route("GET", _path("/runs"), "twoway.runs", query=("pair", "limit")),
    Route("GET", _path("/runs/{id}"), "twoway.status"),
    Route("POST", _path("/runs/{id}/pause"), "twoway.pause", accepted=lambda r: True),
    Route("POST", _path("/runs/{id}/resume"), "twoway.resume", accepted=lambda r: True),
    Route("POST", _path("/runs/{id}/cancel"), "twoway.cancel", accepted=lambda r: True),
    Route("GET", _path("/runs/{id}/log"), "twoway.log", query=("limit",)),
    Route("GET", _path("/conflicts"), "conflicts.list", query=("pair", "type", "unresolved", "limit")),
    Route("GET", _path("/conflicts/{id}"), "conflicts.show"),
    Route("POST", _path("/conflicts/{id}/resolve"), "conflicts.resolve", body=True),
)
_INT_ARGS = frozenset({"id", "limit", "offset"})
_BOOL_ARGS = frozenset({"unresolved"})


class HttpError(Exception):
    """A refusal before the command runs: its status comes from `code` (HTTP_STATUS)."""

    def __init__(self, code: str, message: str, headers: tuple[tuple[bytes, bytes], ...] = ()) -> None:
        self.code = code
        self.message = message
        self.headers = headers
        super().__init__(message)


def event_id(job: dict[str, Any]) -> str:
    """An event's id: the job's status and work done (processed + failed + skipped), and for a
    live job a digest of everything shown ("running.1200.9f2c41d0"), since it changes in ways the
    counts do not (totals learned, rates); a finished job changes no more ("completed.4000").
    Each event is the whole job, so a resumed stream needs only to leave out the state the
    client saw last."""
    done = sum(int(p.get("processed") or 0) + int(p.get("failed") or 0) + int(p.get("skipped") or 0)
               for p in (job.get("progress") or {}).values())
    if job.get("status") in FINISHED_STATUSES:
        return f"{job.get('status')}.{done}"
    digest = hashlib.blake2b(orjson.dumps(job, option=orjson.OPT_SORT_KEYS), digest_size=4).hexdigest()
    return f"{job.get('status')}.{done}.{digest}"


def _sse(event: str, data: Any, ident: str | None = None) -> bytes:
    head = f"id: {ident}\n" if ident is not None else ""
    return f"{head}event: {event}\n".encode() + b"data: " + orjson.dumps(data) + b"\n\n"


class HttpApi:
    """The ASGI app (see the module docstring)."""

    def __init__(self, handler: AdminHandler, authenticate: Authenticate, *, request_timeout: float = 30.0,
                 max_body_bytes: int = 65536, heartbeat: float = HEARTBEAT, max_streams: int = MAX_STREAMS) -> None:
        self.handler = handler
        self.authenticate = authenticate
        self.request_timeout = request_timeout
        self.max_body_bytes = max_body_bytes
        self.heartbeat = heartbeat
        self.max_streams = max_streams
        self.streams = 0

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await acknowledge_lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        try:
            route, path_args = self._route(scope["method"], scope["path"])
            caller = await self._caller(scope)
            args = {**self._query(route, scope), **await self._body(route, scope, receive), **path_args}
            request = parse_request(orjson.dumps({"v": API_VERSION, "id": None, "cmd": route.cmd, "args": args}))
            if route.stream:
                await self._stream(request, caller, scope, receive, send)
                return
            with trio.fail_after(self.request_timeout):
                result = await self.handler.handle(request, caller)
        except HttpError as exc:
            await _respond(send, HTTP_STATUS[exc.code], _error(exc.code, exc.message), exc.headers)
            return
        except AdminError as exc:
            await _respond(send, HTTP_STATUS.get(exc.code, 500), _error(exc.code, exc.message))
            return
        except StoreUnavailable as exc:
            await _respond(send, 503, _error(ErrorCode.UNAVAILABLE, f"the database is unavailable: {exc}"))
            return
        except trio.TooSlowError:
            await _respond(send, 504, _error(ErrorCode.TIMEOUT, f"no answer within {self.request_timeout:g} s"))
            return
        except Exception:
            log.exception("http.internal_error", method=scope.get("method"), path=scope.get("path"))
            await _respond(send, 500, _error(ErrorCode.INTERNAL, "internal error (see the daemon's log)"))
            return
        await _respond(send, 202 if route.accepted and route.accepted(result) else 200, result)

    # -- the checks, in order -----------------------------------------------------------------------

    @staticmethod
    def _route(method: str, path: str) -> tuple[Route, dict[str, Any]]:
        allowed = []
        for route in ROUTES:
            match = route.pattern.match(path)
            if match is None:
                continue
            if route.method != method:
                allowed.append(route.method)
                continue
            args: dict[str, Any] = {}
            for key, value in match.groupdict().items():  # ASGI's path is percent-decoded already
                if key in _INT_ARGS:
                    if not value.isdigit() or len(value) > 18:
                        raise HttpError(ErrorCode.BAD_REQUEST, f"{key} must be a positive integer, got {value!r}")
                    args[key] = int(value)
                else:
                    args[key] = value
            return route, args
        if allowed:
            raise HttpError("method_not_allowed", f"{method} is not allowed on {path}; use {', '.join(allowed)}",
                            ((b"allow", ", ".join(allowed).encode()),))
        raise HttpError(ErrorCode.NOT_FOUND, f"no such route: {method} {path} (the API is under {PREFIX}/, "
                        "see docs/HTTP.md)")

    async def _caller(self, scope: dict[str, Any]) -> Caller:
        challenge = ((b"www-authenticate", b'Bearer realm="freshd"'),)
        header = _header(scope, b"authorization")
        if header is None:
            raise HttpError("unauthorized", "missing bearer token: send 'Authorization: Bearer <token>'", challenge)
        scheme, _, token = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise HttpError("unauthorized", "the Authorization header must be 'Bearer <token>'", challenge)
        caller = await self.authenticate(token.strip())
        if caller is None:
            raise HttpError("unauthorized", "invalid or revoked token", challenge)
        return caller

    @staticmethod
    def _query(route: Route, scope: dict[str, Any]) -> dict[str, Any]:
        raw = scope.get("query_string", b"").decode("latin-1")
        args: dict[str, Any] = {}
        for key, value in parse_qsl(raw, keep_blank_values=True):
            if key not in route.query:
                known = f"; known: {', '.join(route.query)}" if route.query else ""
                raise HttpError(ErrorCode.BAD_REQUEST, f"unknown query parameter {key!r}{known}")
            if key in args:
                raise HttpError(ErrorCode.BAD_REQUEST, f"query parameter {key!r} given twice")
            if key in _INT_ARGS:
                if not value.lstrip("-").isdigit() or len(value) > 18:
                    raise HttpError(ErrorCode.BAD_REQUEST, f"{key} must be an integer, got {value!r}")
                args[key] = int(value)
            elif key in _BOOL_ARGS:
                if value not in ("true", "false"):
                    raise HttpError(ErrorCode.BAD_REQUEST, f"{key} must be true or false, got {value!r}")
                args[key] = value == "true"
            else:
                args[key] = value
        return args

    async def _body(self, route: Route, scope: dict[str, Any], receive: Receive) -> dict[str, Any]:
        """The JSON object a POST may carry (none, or empty: no arguments); bounded by max_body_bytes."""
        length = _header(scope, b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body_bytes):
            raise HttpError(ErrorCode.TOO_LARGE, f"request body larger than {self.max_body_bytes} bytes")
        body = bytearray()
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise HttpError(ErrorCode.BAD_REQUEST, "the client left")
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_body_bytes:
                raise HttpError(ErrorCode.TOO_LARGE, f"request body larger than {self.max_body_bytes} bytes")
        if not body.strip():
            return {}
        if not route.body:
            raise HttpError(ErrorCode.BAD_REQUEST, f"{route.method} {route.pattern.pattern} takes no body")
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise HttpError(ErrorCode.BAD_JSON, f"malformed JSON body: {exc}") from None
        if not isinstance(data, dict):
            raise HttpError(ErrorCode.BAD_REQUEST, "the body must be a JSON object")
        if "name" in data:  # the path names the connection
            raise HttpError(ErrorCode.BAD_REQUEST, "the connection is named in the path, not in the body")
        return data

    # -- Server-Sent Events -------------------------------------------------------------------------

    async def _stream(self, request: Any, caller: Caller, scope: dict[str, Any], receive: Receive,
                      send: Send) -> None:
        if self.streams >= self.max_streams:
            raise HttpError(ErrorCode.UNAVAILABLE, f"{self.max_streams} event streams are open, the most this "
                            "daemon serves; try again later")
        with trio.fail_after(self.request_timeout):
            events: AsyncIterator[Any] = await self.handler.handle(request, caller)  # not_found before any header
        last_seen = _header(scope, b"last-event-id")
        self.streams += 1
        try:
            async with contextlib.aclosing(events):  # type: ignore[type-var]
                await self._send_events(events, last_seen, receive, send)
        finally:
            self.streams -= 1

    async def _send_events(self, events: AsyncIterator[Any], last_seen: str | None, receive: Receive,
                           send: Send) -> None:
        first: Any = None
        with trio.fail_after(self.request_timeout):
            first = await anext(events, None)
        if first is not None and last_seen is not None and event_id(first["job"]) == last_seen \
                and first["job"].get("status") in FINISHED_STATUSES:
            await _respond(send, 204, None)  # seen to its end: an EventSource stops reconnecting
            return
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-store"),
            (b"x-accel-buffering", b"no")]})
        lock = trio.Lock()

        async def emit(chunk: bytes) -> None:
            async with lock:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})

        async def heartbeat() -> None:
            while True:
                await trio.sleep(self.heartbeat)
                await emit(b": keep-alive\n\n")

        async def until_disconnect(scope: trio.CancelScope) -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            scope.cancel()  # the client left: its subscription ends now

        gone = trio.CancelScope()
        with gone:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(heartbeat)
                nursery.start_soon(until_disconnect, gone)
                sent = last_seen  # never the state the client saw last, nor the same one twice

                async def job_event(job: dict[str, Any]) -> None:
                    nonlocal sent
                    if (ident := event_id(job)) != sent:
                        await emit(_sse("job", job, ident))
                        sent = ident

                try:
                    if first is not None:
                        await job_event(first["job"])
                    async for event in events:
                        await job_event(event["job"])
                except AdminError as exc:
                    await emit(_sse("error", {"code": exc.code, "message": exc.message}))
                except StoreUnavailable as exc:
                    await emit(_sse("error", {"code": ErrorCode.UNAVAILABLE,
                                              "message": f"the database is unavailable: {exc}"}))
                nursery.cancel_scope.cancel()
        if not gone.cancelled_caught:
            async with lock:
                await send({"type": "http.response.body", "body": b"", "more_body": False})



def _header(scope: dict[str, Any], name: bytes) -> str | None:
    for key, value in scope.get("headers") or ():
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return None


def _error(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": str(code), "message": " ".join(message.split())}}


async def _respond(send: Send, status: int, payload: Any, headers: tuple[tuple[bytes, bytes], ...] = ()) -> None:
    body = b"" if status == 204 else orjson.dumps(payload) + b"\n"
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"cache-control", b"no-store"), *headers]})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def token_authenticator(store: Store) -> Authenticate:
    """Tokens checked against the store (by their hash; revoked ones refused at once): a Caller
    that sees the token's tenant only."""

    async def authenticate(token: str) -> Caller | None:
        row = await store.call(tokens.authenticate, token)
        return Caller(HTTP_PEER, frozenset({row.tenant}), row.id) if row is not None else None

    return authenticate


async def serve_http_api(
    address: str, handler: AdminHandler, authenticate: Authenticate, *, request_timeout: float = 30.0,
    max_body_bytes: int = 65536, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the HTTP API at `address` (``host:port``; port 0: any) until cancelled; reports its base
    URL (``http://127.0.0.1:8080``) through `task_status` once listening."""
    host, port = split_host_port(address)
    app = HttpApi(handler, authenticate, request_timeout=request_timeout, max_body_bytes=max_body_bytes)

    def url(bound: int) -> str:
        where = f"http://{host if ':' not in host else f'[{host}]'}:{bound}"
        log.info("http.listening", url=where + PREFIX)
        return where

    await serve_asgi(app, host, port, report=url, task_status=task_status)
