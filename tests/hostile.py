"""A WooCommerce look-alike that misbehaves on purpose: the hardening tests' provider.

The faithful simulator (freshd.connectors.woocommerce.simulator) still decides every answer;
this server sits on the wire in front of it, as a raw HTTP/1.1 server on a trio socket, and
corrupts what goes out the way a broken or hostile provider (or a proxy in between) would:
headers that lie, pages that come back empty, clocks in 2099, bodies without end, gzip bombs,
headers trickled a byte at a time, error texts that echo the request URL with its secrets.
None of this belongs in the faithful simulators, whose job is to be right.

    hostile = HostileShop(customers=250)
    port = await nursery.start(hostile.serve)
    hostile.empty_pages = {2}            # page 2 of every listing comes back []

Every knob applies to listing requests of `paths` (default: the three collections); the rest
pass through untouched.  `requests` counts what arrived, by path.
"""

from __future__ import annotations

import gzip
import math
import urllib.parse
import zlib
from collections import Counter
from dataclasses import dataclass, field
from email.utils import formatdate

import orjson
import trio

from freshd.connectors.simulator import Request
from freshd.connectors.woocommerce.simulator import PREFIX, WooCommerceSimulator

CREDENTIALS = {"consumer_key": "ck_hostile_key", "consumer_secret": "cs_hostile_secret"}
MAX_REQUEST_HEAD = 64 * 1024


@dataclass
class HostileShop:
    customers: int = 250
    orders: int = 0
    products: int = 0
    credentials: dict[str, str] = field(default_factory=lambda: dict(CREDENTIALS))
    paths: tuple[str, ...] = ("customers", "orders", "products")

    # --- the knobs: None / empty means "behave" ---------------------------------------------------
    empty_pages: set[int] = field(default_factory=set)  # these page numbers come back []
    total_pages: str | None = None  # X-WP-TotalPages replaced by this text
    total: str | None = None  # X-WP-Total replaced by this text
    drop_paging_headers: bool = False  # no X-WP-Total / X-WP-TotalPages at all
    gzip_bodies: bool = False  # bodies gzip-encoded (Content-Encoding: gzip)
    date: str | None = None  # the Date header, e.g. "Thu, 01 Jan 2099 00:00:00 GMT"
    retry_after: str | None = None  # every request: 429 with this Retry-After
    trickle: float | None = None  # the response head goes out one byte every `trickle` seconds
    endless: bool = False  # a chunked body that never ends
    bomb: int | None = None  # a gzip body that inflates to this many bytes
    body_bytes: int | None = None  # a (valid) JSON body of about this many bytes
    echo_url_status: int | None = None  # an error of this status whose message echoes the request URL
    redirect: bool = False  # 302 to another path
    body: bytes | None = None  # this body instead of the real one (status 200)
    records: list[object] | None = None  # extra raw items appended to the first customers page

    requests: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self.sim = WooCommerceSimulator(
            records=self.customers, seed=3, credentials=self.credentials,
            customers=self.customers, orders=self.orders, products=self.products,
        )

    def behave(self) -> None:
        """Every knob back to honest."""
        fresh = HostileShop(self.customers, self.orders, self.products, self.credentials, self.paths)
        for name in ("empty_pages", "total_pages", "total", "drop_paging_headers", "gzip_bodies", "date",
                     "retry_after", "trickle", "endless", "bomb", "body_bytes", "echo_url_status", "redirect",
                     "body", "records"):
            setattr(self, name, getattr(fresh, name))

    # --- serving ----------------------------------------------------------------------------------

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        task_status.started(listeners[0].socket.getsockname()[1])
        await trio.serve_listeners(self._serve_client, listeners)

    async def _serve_client(self, stream: trio.SocketStream) -> None:
        try:
            async with stream:
                head = bytearray()
                while b"\r\n\r\n" not in head:
                    chunk = await stream.receive_some(4096)
                    if not chunk or len(head) > MAX_REQUEST_HEAD:
                        return
                    head += chunk
                request = _parse(bytes(head))
                self.requests[request.path] += 1
                await self._answer(stream, request)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client gave up: that is often the point

    def _targeted(self, request: Request) -> bool:
        return request.method == "GET" and any(request.path == f"{PREFIX}/{p}" for p in self.paths)

    async def _answer(self, stream: trio.SocketStream, request: Request) -> None:
        response = await self.sim.app.dispatch(request)
        headers = dict((k.lower(), v) for k, v in response.headers)
        body = response.body
        status = response.status
        if not self._targeted(request):
            await _send(stream, status, headers, body)
            return
        page = int(request.arg("page") or 1)
        if self.retry_after is not None:
            status, body = 429, b'{"code":"too_many_requests","message":"slow down"}'
            headers = {"content-type": "application/json", "retry-after": self.retry_after}
        elif self.echo_url_status is not None:
            url = f"{request.path}?{urllib.parse.urlencode(request.query)}"
            status = self.echo_url_status
            body = orjson.dumps({"code": "rest_forbidden", "message": f"Sorry, you cannot list resources: {url}"})
        elif self.redirect:
            status, body, headers = 302, b"", {"location": "/elsewhere"}
        elif self.body is not None:
            body = self.body
        elif page in self.empty_pages:
            body = b"[]"
        elif self.records is not None and page == 1 and request.path.endswith("/customers"):
            body = orjson.dumps([*orjson.loads(body), *self.records])
        if self.drop_paging_headers:
            headers.pop("x-wp-total", None)
            headers.pop("x-wp-totalpages", None)
        if self.total is not None:
            headers["x-wp-total"] = self.total
        if self.total_pages is not None:
            headers["x-wp-totalpages"] = self.total_pages
        if self.date is not None:
            headers["date"] = self.date
        if self.bomb is not None:
            headers["content-encoding"] = "gzip"
            await _send(stream, 200, headers, _gzip_bomb(self.bomb))
            return
        if self.gzip_bodies:
            headers["content-encoding"] = "gzip"
            body = gzip.compress(body)
        if self.endless:
            await _send_endless(stream, headers)
            return
        if self.body_bytes is not None:
            await _send_big(stream, headers, self.body_bytes)
            return
        await _send(stream, status, headers, body, trickle=self.trickle)


def _parse(head: bytes) -> Request:
    lines = head.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    method, target, _ = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    path, _, query = target.partition("?")
    return Request(method, path, urllib.parse.parse_qsl(query, keep_blank_values=True), headers, b"", "http",
                   headers.get("host", ""), "127.0.0.1")


_REASONS = {200: "OK", 302: "Found", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
            429: "Too Many Requests"}


def _head(status: int, headers: dict[str, str]) -> bytes:
    headers.setdefault("date", formatdate(usegmt=True))
    headers["connection"] = "close"
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def _send(stream: trio.SocketStream, status: int, headers: dict[str, str], body: bytes,
                *, trickle: float | None = None) -> None:
    headers = {k: v for k, v in headers.items() if k not in ("content-length", "transfer-encoding")}
    headers["content-length"] = str(len(body))
    head = _head(status, headers)
    if trickle:
        for byte in head:
            await stream.send_all(bytes([byte]))
            await trio.sleep(trickle)
    else:
        await stream.send_all(head)
    await stream.send_all(body)


async def _send_endless(stream: trio.SocketStream, headers: dict[str, str]) -> None:
    """`[` and then list items forever, 64 KiB a chunk, as fast as the client reads."""
    headers = {k: v for k, v in headers.items() if k not in ("content-length", "content-encoding")}
    headers["transfer-encoding"] = "chunked"
    await stream.send_all(_head(200, headers))
    chunk = b'"' + b"x" * 65530 + b'",'
    frame = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
    await stream.send_all(b"1\r\n[\r\n")
    for _ in range(1_000_000):  # bounded: ~64 GB, far beyond any cap under test
        await stream.send_all(frame)


async def _send_big(stream: trio.SocketStream, headers: dict[str, str], size: int) -> None:
    """A valid JSON list of about `size` bytes with its Content-Length, made as it is sent."""
    item = b'"' + b"x" * 65530 + b'",'
    count = max(1, size // len(item))
    headers = {k: v for k, v in headers.items() if k not in ("content-length", "content-encoding")}
    headers["content-length"] = str(1 + count * len(item) + 3)
    await stream.send_all(_head(200, headers) + b"[")
    for _ in range(count):
        await stream.send_all(item)
    await stream.send_all(b'""]')


def _gzip_bomb(size: int) -> bytes:
    """A gzip stream of `size` bytes of JSON-ish filler, compressed ~1000:1."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = b" " * (1 << 20)
    parts = [compressor.compress(b"[")]
    for _ in range(math.ceil(size / len(block))):
        parts.append(compressor.compress(block))
    parts.append(compressor.compress(b"]") + compressor.flush())
    return b"".join(parts)
