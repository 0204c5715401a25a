"""What every provider simulator is (`Simulator`) and shares: serving, routing, fault injection, fake data.

A simulator is a real HTTP server on loopback (hypercorn on the trio loop, see
freshd.asgi) speaking its provider's real paths, parameters, auth, pagination
and error bodies.  Each provider module builds a `SimulatorApp` with its routes
and its own error shape; this module adds the `/_sim/` control endpoints
(no auth) and fault injection in front of every provider route:

    POST   /_sim/faults  {"status": 429, "count": 3, "retry_after": 2}   next 3 requests get 429
                         {"status": 503, "count": 5}                       a 5xx burst
                         {"latency": 0.5}                                  added delay per request
                         {"malformed": 2}                                  next 2 bodies garbled
                         {"rate": 5, "burst": 5}                           hard per-client limit -> 429
                         {"timeout": 2}                                    next 2 requests hang (client times out)
                         {"loop": true}                                    listings ignore their page/cursor
                                                                           (a pagination loop)
                         {"expire_tokens": true}                           every issued access token expires
                         {"revoke_tokens": true}                           refresh grants are refused too
    DELETE /_sim/faults                                                    clear all faults
    GET    /_sim/stats                                                     requests served, by path
    POST   /_sim/mutate  {"count": 10}       10 random changes (simulators that pass `changes`)
    GET    /_sim/state                       what the simulator holds (simulators that pass `state`)
"""

from __future__ import annotations

import random
import re
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable
from urllib.parse import parse_qsl

import orjson
import trio

from freshd.asgi import acknowledge_lifespan, serve_asgi

__all__ = ["ApiError", "FakeData", "Faults", "Handler", "Request", "Response", "Simulator", "SimulatorApp",
           "serve_asgi", "take_token"]


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str
    query: list[tuple[str, str]]
    headers: dict[str, str]
    body: bytes
    scheme: str
    host: str
    client: str
    params: dict[str, str] = field(default_factory=dict)  # from the route pattern

    def arg(self, name: str, default: str | None = None) -> str | None:
        for key, value in self.query:
            if key == name:
                return value
        return default

    def json(self, invalid: Exception | None = None) -> Any:
        """The body as JSON (None when empty); a malformed body raises `invalid` when one is given."""
        try:
            return orjson.loads(self.body) if self.body else None
        except orjson.JSONDecodeError:
            if invalid is None:
                raise
            raise invalid from None


@dataclass(slots=True)
class Response:
    status: int = 200
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)

    @classmethod
    def json(cls, data: Any, status: int = 200, headers: list[tuple[str, str]] | None = None) -> Response:
        return cls(status, orjson.dumps(data), [("content-type", "application/json; charset=UTF-8"),
                                                *(headers or [])])


class ApiError(Exception):
    """A provider error answer, raised from anywhere under a handler: the router serves `response`."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status)
        self.response = response


ErrorBody = Callable[[int, str, str], Response]  # (status, code, message) -> the provider's error response
Handler = Callable[[Request], Awaitable[Response]]
Guard = Callable[[Request], None]  # a route's auth check: raises ApiError to refuse the request


def take_token(buckets: dict[str, tuple[float, float]], key: str, rate: float, burst: float, now: float) -> bool:
    """A token bucket per key (tokens, last refill), refilled at `rate` a second up to `burst`:
    whether a token was there to take."""
    tokens, stamp = buckets.get(key, (burst, now))
    tokens = min(burst, tokens + (now - stamp) * rate)
    buckets[key] = (tokens - 1, now) if tokens >= 1 else (tokens, now)
    return tokens >= 1


@dataclass
class Faults:
    """Injected misbehaviour, consumed request by request."""

    status: int | None = None
    count: int = 0
    retry_after: float | None = None
    retry_after_date: bool = False
    latency: float = 0.0
    malformed: int = 0
    rate: float | None = None
    burst: float = 1.0
    timeouts: int = 0
    loop: bool = False  # provider handlers consult it: serve the first page whatever was asked
    methods: frozenset[str] | None = None  # status and rate faults hit only these methods (None: all)
    _buckets: dict[str, tuple[float, float]] = field(default_factory=dict)

    def configure(self, spec: dict[str, Any]) -> None:
        if "status" in spec:
            self.status, self.count = int(spec["status"]), int(spec.get("count", 1))
            self.retry_after = spec.get("retry_after")
            self.retry_after_date = bool(spec.get("retry_after_date", False))
        if "latency" in spec:
            self.latency = float(spec["latency"])
        if "malformed" in spec:
            self.malformed = int(spec["malformed"])
        if "rate" in spec:
            self.rate, self.burst = float(spec["rate"]), float(spec.get("burst", 1))
            self._buckets.clear()
        if "timeout" in spec:
            self.timeouts = int(spec["timeout"])
        if "loop" in spec:
            self.loop = bool(spec["loop"])
        if "methods" in spec:
            self.methods = frozenset(m.upper() for m in spec["methods"]) if spec["methods"] else None

    def clear(self) -> None:
        self.status, self.count, self.latency, self.malformed, self.rate = None, 0, 0.0, 0, None
        self.timeouts, self.loop, self.methods = 0, False, None
        self._buckets.clear()

    def over_rate(self, client: str, now: float) -> float | None:
        """Token bucket per client: None if allowed, else seconds until a token is back."""
        if self.rate is None or take_token(self._buckets, client, self.rate, self.burst, now):
            return None
        return (1 - self._buckets[client][0]) / self.rate

    def as_json(self) -> dict[str, Any]:
        return {"status": self.status, "count": self.count, "retry_after": self.retry_after,
                "latency": self.latency, "malformed": self.malformed, "rate": self.rate, "burst": self.burst,
                "timeout": self.timeouts, "loop": self.loop,
                "methods": sorted(self.methods) if self.methods else None}


def _retry_after_value(seconds: float, as_date: bool) -> str:
    if as_date:
        from email.utils import formatdate

        return formatdate(time.time() + seconds, usegmt=True)
    return str(max(0, round(seconds)))


class SimulatorApp:
    """A tiny ASGI router with the shared control endpoints and fault layer."""

    def __init__(self, error_body: ErrorBody, *, changes: Callable[[int], dict[str, int]] | None = None,
                 state: Callable[[], dict[str, int]] | None = None, **actions: Callable[[], None]) -> None:
        """`actions`: the provider's hooks for the token faults ("expire_tokens", "revoke_tokens");
        `changes` (the simulator's random_changes) and `state` serve /_sim/mutate and /_sim/state."""
        self.error_body = error_body
        self.faults = Faults()
        self.stats: Counter[str] = Counter()
        # the most recent requests (path, query), for tests that check what a client asked for
        self.requests: deque[tuple[str, dict[str, str]]] = deque(maxlen=10_000)
        self._routes: list[tuple[str, re.Pattern[str], Handler, Guard | None]] = []
        self.actions: dict[str, Callable[[], None]] = dict(actions)
        self.route("POST", "/_sim/faults", self._set_faults)
        self.route("DELETE", "/_sim/faults", self._clear_faults)
        self.route("GET", "/_sim/faults", self._get_faults)
        self.route("GET", "/_sim/stats", self._get_stats)
        if changes is not None:
            async def mutate(request: Request) -> Response:
                return Response.json(changes(int((request.json() or {}).get("count", 1))))
            self.route("POST", "/_sim/mutate", mutate)
        if state is not None:
            async def current(request: Request) -> Response:
                return Response.json(state())
            self.route("GET", "/_sim/state", current)

    def route(self, method: str, pattern: str, handler: Handler, guard: Guard | None = None) -> None:
        """`pattern` uses {name} for a path segment, e.g. /wp-json/wc/v3/{resource}/{id}; `guard`
        (the provider's auth check) runs before the handler."""
        regex = re.compile("^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", pattern) + "/?$", re.IGNORECASE)
        self._routes.append((method, regex, handler, guard))

    async def _set_faults(self, request: Request) -> Response:
        spec = request.json()
        if not isinstance(spec, dict):
            return Response.json({"error": "a JSON object is required"}, 400)
        for action in ("expire_tokens", "revoke_tokens"):
            if spec.pop(action, False):
                if action not in self.actions:
                    return Response.json({"error": f"{action} is not supported by this simulator"}, 400)
                self.actions[action]()
        self.faults.configure(spec)
        return Response.json(self.faults.as_json())

    async def _clear_faults(self, request: Request) -> Response:
        self.faults.clear()
        return Response.json(self.faults.as_json())

    async def _get_faults(self, request: Request) -> Response:
        return Response.json(self.faults.as_json())

    async def _get_stats(self, request: Request) -> Response:
        return Response.json({"total": sum(self.stats.values()), "by_path": dict(self.stats)})

    async def dispatch(self, request: Request) -> Response:
        control = request.path.startswith("/_sim/")
        if not control:
            self.stats[request.path] += 1
            self.requests.append((request.path, dict(request.query)))
            fault = await self._fault(request)
            if fault is not None:
                return fault
        allowed = []
        for method, regex, handler, guard in self._routes:
            match = regex.match(request.path)
            if match:
                if method != request.method:
                    allowed.append(method)
                    continue
                request.params.update(match.groupdict())
                try:
                    if guard is not None:
                        guard(request)
                    response = await handler(request)
                except ApiError as exc:
                    response = exc.response
                if not control and self.faults.malformed > 0 and response.status == 200:
                    self.faults.malformed -= 1
                    response.body = response.body[: max(1, len(response.body) // 2)] + b"\x00{"
                return response
        return self.error_body(404, "rest_no_route", "No route was found matching the URL and request method.")

    async def _fault(self, request: Request) -> Response | None:
        faults = self.faults
        if faults.latency:
            await trio.sleep(faults.latency)
        if faults.timeouts > 0:
            faults.timeouts -= 1
            await trio.sleep(3600)  # the client's timeout ends it
        if faults.methods is not None and request.method not in faults.methods:
            return None
        wait = faults.over_rate(request.client, trio.current_time())
        if wait is not None:
            response = self.error_body(429, "rate_limited", "Too many requests.")
            response.headers.append(("retry-after", _retry_after_value(wait + 0.999, False)))
            return response
        if faults.status is not None and faults.count > 0:
            faults.count -= 1
            status = faults.status
            if faults.count == 0:
                faults.status = None
            response = self.error_body(status, "simulated_fault", f"Simulated HTTP {status}.")
            if faults.retry_after is not None:
                value = _retry_after_value(faults.retry_after, faults.retry_after_date)
                response.headers.append(("retry-after", value))
            return response
        return None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await acknowledge_lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        client = scope.get("client") or ("?", 0)
        request = Request(
            method=scope["method"], path=scope["path"],
            query=parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True),
            headers=headers, body=body, scheme=scope.get("scheme", "http"),
            host=headers.get("host", "127.0.0.1"), client=str(client[0]),
        )
        response = await self.dispatch(request)
        await send({"type": "http.response.start", "status": response.status,
                    "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in response.headers]})
        await send({"type": "http.response.body", "body": response.body})


@runtime_checkable
class Simulator(Protocol):
    """What every provider simulator is (`PROVIDER.simulator`, freshd.connectors.registry).

    Built with `records` per entity, a `seed` (the same seed gives the same data and the same
    changes) and the `credentials` it accepts (None: the provider's test defaults); provider-specific
    keywords come after these and have defaults.  It serves its provider's API on `.app`
    (`freshd simulate` runs it).  The rest is the contract the test suite drives every provider
    through (tests/rig.py, the conformance suite).
    """

    app: SimulatorApp
    token_requests: int  # token endpoint calls that issued a token (0 forever for key-based auth)

    def __init__(self, records: int = ..., seed: int = ..., credentials: dict[str, str] | None = ...) -> None: ...

    def random_changes(self, count: int) -> dict[str, int]:
        """`count` random creates, updates and deletes (deterministic for the seed), counted by kind."""
        ...

    def count(self, entity: str) -> int:
        """Live records of `entity` a complete sync must end with."""
        ...

    def mutate(self, entity: str) -> dict[str, str | None]:
        """Create one record, update one, delete one (None where the entity cannot be deleted).

        Returns {"created": id, "updated": id, "deleted": id or None} as external ids (strings).
        """
        ...

    def corrupt(self, entity: str) -> str:
        """Make one record malformed as a client would see it (e.g. a NUL in a text field);
        returns its external id. The next sync must skip it and record why."""
        ...


class FakeData:
    """Deterministic fake people, places and prices from one seed (no Faker needed)."""

    FIRST = ["Ada", "Grace", "Alan", "Linus", "Barbara", "Edsger", "Margaret", "Donald", "Frances", "Ken",
             "Radia", "Dennis", "Hedy", "John", "Karen", "Niklaus", "Shafi", "Tim", "Sophie", "Yukihiro"]
    LAST = ["Lovelace", "Hopper", "Turing", "Torvalds", "Liskov", "Dijkstra", "Hamilton", "Knuth", "Allen",
            "Thompson", "Perlman", "Ritchie", "Lamarr", "Backus", "Jones", "Wirth", "Goldwasser", "Berners-Lee",
            "Wilson", "Matsumoto"]
    CITIES = [("Paris", "FR", "75001"), ("Berlin", "DE", "10115"), ("Austin", "US", "73301"),
              ("Lyon", "FR", "69001"), ("Madrid", "ES", "28001"), ("Leeds", "GB", "LS1 1AA")]
    WORDS = ["Widget", "Gadget", "Gizmo", "Doohickey", "Sprocket", "Flange", "Bracket", "Lever", "Valve", "Dial"]

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def person(self) -> tuple[str, str]:
        return self.rng.choice(self.FIRST), self.rng.choice(self.LAST)

    def address(self, first: str, last: str, email: str) -> dict[str, str]:
        city, country, postcode = self.rng.choice(self.CITIES)
        return {
            "first_name": first, "last_name": last, "company": "", "address_1": f"{self.rng.randint(1, 200)} Main St",
            "address_2": "", "city": city, "state": "", "postcode": postcode, "country": country,
            "email": email, "phone": f"+33 6 {self.rng.randint(10, 99)} {self.rng.randint(10, 99)} "
                                     f"{self.rng.randint(10, 99)} {self.rng.randint(10, 99)}",
        }

    def price(self, low: float = 3, high: float = 400) -> str:
        return f"{self.rng.uniform(low, high):.2f}"

    def product_name(self) -> str:
        return f"{self.rng.choice(['Deluxe', 'Basic', 'Pro', 'Mini', 'Ultra'])} {self.rng.choice(self.WORDS)}"

