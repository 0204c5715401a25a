"""A small generic JSON API for the generic REST connector: one dataset, every pagination style.

Resources ``contacts``, ``deals`` and ``tickets`` (``{resource}`` below), each served
under every pagination style the connector knows, with the common envelope shapes:

    GET  /api/v1/page/{resource}?page=&per_page=         {"data": [...], "meta": {"page", "per_page",
                                                          "total", "total_pages"}} + X-Total-Count,
                                                          X-Total-Pages
    GET  /api/v1/offset/{resource}?offset=&limit=        [...] + X-Total-Count
    GET  /api/v1/cursor/{resource}?cursor=&limit=        {"results": [...], "paging": {"next_cursor": "…" | null}}
    GET  /api/v1/cursor_header/{resource}?after=&limit=  {"items": [...]} + X-Next-Cursor while there is more
    GET  /api/v1/link/{resource}?page=&per_page=         [...] + Link rel="next"/"last" (GitHub style)
    GET  /api/v1/none/{resource}                         {"data": {"items": [...]}}: everything at once
    GET  /api/v1/records/{resource}/{id}                 one record (404 once deleted)
    POST /oauth/token                                    RFC 6749 §6 refresh grant (form body)

Every listing takes ``updated_since`` (strictly after; ISO 8601, naive = UTC, or
epoch seconds) and ``sort=updated_at`` (ascending by updated_at, then id; the
default is id ascending).  Page sizes default to 25, at most 100 (400 above).
Records carry ``updated_at`` as ``YYYY-MM-DDTHH:MM:SSZ``; ``archive()`` sets
``archived: true`` (a soft delete), ``delete()`` removes a record for good.

Auth (constructor ``auth``; None accepts any of them): ``none``; ``bearer``
(credentials.token, or an access token from /oauth/token); ``basic``
(username/password); ``api_key_header`` (X-API-Key); ``api_key_query``
(``?api_key=``); ``oauth2`` (tokens from /oauth/token only).  Access tokens last
an hour; ``rotate_refresh_tokens=True`` makes refresh tokens single-use.
Errors are ``{"error": {"code", "message"}}``; token errors are RFC 6749 §5.2
``{"error", "error_description"}``.
"""

from __future__ import annotations

import base64
import hmac
import secrets
import urllib.parse
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from freshd.connectors.simcollection import Collection, RecordSimulator, iso, link_header, page_count
from freshd.connectors.simulator import ApiError, Request, Response, SimulatorApp

PREFIX = "/api/v1"
RESOURCES = ("contacts", "deals", "tickets")
STYLES = ("page", "offset", "cursor", "cursor_header", "link", "none")
AUTH_KINDS = ("none", "bearer", "basic", "api_key_header", "api_key_query", "oauth2")
DEFAULT_SIZE, MAX_SIZE = 25, 100
TOKEN_LIFETIME = 3600
STAGES = ("lead", "qualified", "proposal", "negotiation", "won", "lost")
TICKET_STATUSES = ("new", "open", "pending", "solved", "closed")
DEFAULT_CREDENTIALS = {
    "token": "tok_demo", "username": "demo", "password": "demo-secret", "api_key": "key_demo",
    "client_id": "client_demo", "client_secret": "csecret_demo", "refresh_token": "rt_demo",
}


def error(status: int, code: str, message: str) -> Response:
    return Response.json({"error": {"code": code, "message": message}}, status)


class GenericRestSimulator(RecordSimulator):
    def __init__(
        self,
        records: int = 100,
        seed: int = 1,
        credentials: dict[str, str] | None = None,
        *,
        auth: str | None = None,
        rotate_refresh_tokens: bool = False,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        if auth is not None and auth not in AUTH_KINDS:
            raise ValueError(f"unknown auth {auth!r}; valid: {', '.join(AUTH_KINDS)}")
        self.credentials = {**DEFAULT_CREDENTIALS, **(credentials or {})}
        self.auth = auth
        self.rotate_refresh_tokens = rotate_refresh_tokens
        super().__init__(seed, clock)
        self.collections = {r: Collection(r, "updated_at") for r in RESOURCES}
        self.docs = {r: c.docs for r, c in self.collections.items()}
        self.by_updated = {r: c.by_modified for r, c in self.collections.items()}
        self.entities = {
            r: self.entity(r, touch={"contacts": "notes"}.get(r, "description"),
                           corrupt={"contacts": "last_name", "deals": "title", "tickets": "subject"}[r],
                           change=lambda _: {"owner_id": self.fake.rng.randint(1, 12)},
                           live=lambda rid, docs=self.docs[r]: not docs[rid].get("archived"))  # type: ignore[misc]
            for r in RESOURCES}
        self.tokens: dict[str, float] = {}  # access token -> expiry (epoch seconds)
        self.refresh_tokens = {self.credentials["refresh_token"]}
        self.revoked = False
        now = self._now()
        # seeded changes stay a minute in the past: a test's first change is always newer
        self._seed(dict.fromkeys(RESOURCES, records), now, history=timedelta(days=400), span=timedelta(days=390),
                   drift=timedelta(days=5), latest=now - timedelta(minutes=1))
        self.app = SimulatorApp(error, expire_tokens=self.expire_tokens, revoke_tokens=self.revoke_tokens)
        self.app.route("GET", PREFIX + "/records/{resource}/{id}", self._read, guard=self._authenticate)
        self.app.route("GET", PREFIX + "/{style}/{resource}", self._list, guard=self._authenticate)
        self.app.route("POST", "/oauth/token", self._token)

    # --- data ------------------------------------------------------------------------------------

    def _text(self, words: int) -> str:
        vocabulary = [w.lower() for w in self.fake.WORDS] + ["customer", "asked", "about", "the", "renewal",
                                                              "invoice", "shipping", "call", "back", "next",
                                                              "week", "quote", "discount", "support"]
        return " ".join(self.fake.rng.choice(vocabulary) for _ in range(words)).capitalize() + "."

    def _make(self, resource: str, rid: int, created: datetime, updated: datetime) -> dict[str, Any]:
        fake = self.fake
        dates = {"created_at": iso(created), "updated_at": iso(updated)}
        first, last = fake.person()
        email = f"{first}.{last}.{rid}@example.com".lower()
        if resource == "contacts":
            return {"id": rid, "first_name": first, "last_name": last, "email": email,
                    "company": {"name": f"{last} {fake.rng.choice(fake.WORDS)}s Ltd",
                                "domain": f"{last.lower()}.example.com"},
                    "address": fake.address(first, last, email), "lifecycle_stage": fake.rng.choice(STAGES),
                    "tags": sorted({fake.rng.choice(["vip", "newsletter", "partner", "churn-risk", "trial"])
                                    for _ in range(2)}),
                    "owner_id": fake.rng.randint(1, 12), "notes": self._text(70), "archived": False, **dates}
        if resource == "deals":
            qty = fake.rng.randint(1, 20)
            price = fake.price()
            return {"id": rid, "title": f"{fake.product_name()} for {last}", "amount": f"{float(price) * qty:.2f}",
                    "currency": "EUR", "stage": fake.rng.choice(STAGES), "probability": fake.rng.randint(5, 95),
                    "contact_id": fake.rng.randint(1, 50),
                    "close_date": (created + timedelta(days=fake.rng.randint(10, 90))).date().isoformat(),
                    "line_items": [{"sku": f"SKU-{fake.rng.randint(1000, 9999)}", "name": fake.product_name(),
                                    "quantity": qty, "unit_price": price}],
                    "description": self._text(90), "archived": False, **dates}
        return {"id": rid, "subject": f"{fake.product_name()} {self._text(4).lower().rstrip('.')}",
                "description": self._text(100), "status": fake.rng.choice(TICKET_STATUSES),
                "priority": fake.rng.choice(["low", "normal", "high", "urgent"]),
                "requester": {"name": f"{first} {last}", "email": email},
                "comments_count": fake.rng.randint(0, 12), "archived": False, **dates}

    def _touched(self, name: str, moment: datetime) -> dict[str, Any]:
        return {"updated_at": iso(moment)}

    def archive(self, resource: str, rid: int) -> dict[str, Any]:
        """A soft delete: the record stays listed with archived=true."""
        return self.update(resource, rid, archived=True)

    # `delete` (RecordSimulator): gone for good, no tombstone; only a complete listing shows it

    def expire_tokens(self) -> None:
        self.tokens = dict.fromkeys(self.tokens, 0.0)

    def revoke_tokens(self) -> None:
        self.expire_tokens()
        self.revoked = True

    # --- auth ------------------------------------------------------------------------------------

    def _accepts(self, kind: str) -> bool:
        return self.auth is None or self.auth == kind

    def _authenticate(self, request: Request) -> None:
        if self.auth == "none":
            return
        creds = self.credentials
        header = request.headers.get("authorization", "")
        if header.lower().startswith("bearer "):
            token = header[7:].strip()
            if self._accepts("bearer") and hmac.compare_digest(token, creds["token"]):
                return
            if self._accepts("bearer") or self._accepts("oauth2"):
                expires = self.tokens.get(token)
                if expires is not None and expires > self.clock().timestamp():
                    return
                if expires is not None:
                    raise ApiError(Response.json(
                        {"error": {"code": "token_expired", "message": "The access token expired."}}, 401,
                        [("www-authenticate", 'Bearer error="invalid_token", error_description="expired"')]))
            raise ApiError(error(401, "invalid_token", "The access token is invalid."))
        if header.lower().startswith("basic ") and self._accepts("basic"):
            try:
                user, _, password = base64.b64decode(header[6:]).decode().partition(":")
            except ValueError:
                user = password = ""
            if hmac.compare_digest(user, creds["username"]) and hmac.compare_digest(password, creds["password"]):
                return
            raise ApiError(error(401, "invalid_credentials", "Invalid username or password."))
        key = request.headers.get("x-api-key") if self._accepts("api_key_header") else None
        if key is None and self._accepts("api_key_query"):
            key = request.arg("api_key")
        if key is not None:  # the header's, else the query's
            if hmac.compare_digest(key, creds["api_key"]):
                return
            raise ApiError(error(401, "invalid_api_key", "Invalid API key."))
        raise ApiError(error(401, "unauthorized", "Authentication required."))

    async def _token(self, request: Request) -> Response:
        def refused(status: int, code: str, description: str) -> Response:
            return Response.json({"error": code, "error_description": description}, status)

        form = dict(urllib.parse.parse_qsl(request.body.decode("latin-1"), keep_blank_values=True))
        client_id, client_secret = form.get("client_id", ""), form.get("client_secret", "")
        header = request.headers.get("authorization", "")
        if header.lower().startswith("basic "):  # RFC 6749 §2.3.1: form-encoded, then Basic
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
            client_id, client_secret = urllib.parse.unquote_plus(user), urllib.parse.unquote_plus(password)
        if form.get("grant_type") != "refresh_token":
            return refused(400, "unsupported_grant_type", "Only the refresh_token grant is supported.")
        if not (hmac.compare_digest(client_id, self.credentials["client_id"])
                and hmac.compare_digest(client_secret, self.credentials["client_secret"])):
            return refused(401, "invalid_client", "Client authentication failed.")
        refresh = form.get("refresh_token", "")
        if self.revoked or refresh not in self.refresh_tokens:
            return refused(400, "invalid_grant", "The refresh token is invalid, expired or revoked.")
        access = "at_" + secrets.token_urlsafe(16)
        self.tokens[access] = self.clock().timestamp() + TOKEN_LIFETIME
        self.token_requests += 1
        body: dict[str, Any] = {"access_token": access, "token_type": "Bearer", "expires_in": TOKEN_LIFETIME}
        if self.rotate_refresh_tokens:
            self.refresh_tokens.discard(refresh)
            rotated = "rt_" + secrets.token_urlsafe(16)
            self.refresh_tokens.add(rotated)
            body["refresh_token"] = rotated
        return Response.json(body)

    # --- handlers ----------------------------------------------------------------------------------

    def _int(self, request: Request, name: str, default: int, low: int, high: int | None = None) -> int:
        raw = request.arg(name)
        try:
            value = default if raw in (None, "") else int(raw or "")
        except ValueError:
            raise ApiError(error(400, "invalid_parameter", f"{name} must be an integer.")) from None
        if value < low or (high is not None and value > high):
            bound = f"at least {low}" if high is None else f"between {low} and {high}"
            raise ApiError(error(400, "invalid_parameter", f"{name} must be {bound}."))
        return value

    def _size(self, request: Request, name: str) -> int:
        return self._int(request, name, DEFAULT_SIZE, 1, MAX_SIZE)

    def _selection(self, request: Request, resource: str) -> list[int]:
        """Ids the listing covers, in order (the filter and the sort, not the page)."""
        since_text = None
        if raw := request.arg("updated_since"):
            try:
                since = datetime.fromtimestamp(float(raw), UTC) if raw.replace(".", "", 1).isdigit() \
                    else datetime.fromisoformat(raw.replace("Z", "+00:00"))
            except ValueError:
                raise ApiError(error(400, "invalid_parameter", "updated_since must be ISO 8601 or epoch seconds.")) \
                    from None
            since = since if since.tzinfo else since.replace(tzinfo=UTC)
            since_text = iso(since)
        sort = request.arg("sort") or "id"
        if sort not in ("id", "updated_at"):
            raise ApiError(error(400, "invalid_parameter", "sort must be one of: id, updated_at."))
        coll = self.collections[resource]
        if sort == "updated_at":
            return coll.modified_between(since_text)
        return sorted(coll.modified_between(since_text)) if since_text else list(coll.ids)

    async def _list(self, request: Request) -> Response:
        style, resource = request.params["style"], request.params["resource"]
        if style not in STYLES or resource not in RESOURCES:
            raise ApiError(error(404, "not_found", "No such endpoint."))
        ids = self._selection(request, resource)
        docs = self.docs[resource]
        total = len(ids)
        loop = self.app.faults.loop  # the fault: every position asked for is the first one

        def page_of(start: int, size: int) -> list[dict[str, Any]]:
            return [docs[rid] for rid in ids[start:start + size]]

        if style in ("page", "link"):
            size = self._size(request, "per_page")
            page = 1 if loop else self._int(request, "page", 1, 1)
            pages = page_count(total, size)
            records = page_of((page - 1) * size, size)
            headers = [("x-total-count", str(total)), ("x-total-pages", str(pages))]
            if style == "page":
                return Response.json({"data": records, "meta": {"page": page, "per_page": size, "total": total,
                                                                "total_pages": pages}}, headers=headers)
            return Response.json(records, headers=self._links(request, page, pages))
        if style == "offset":
            size = self._size(request, "limit")
            offset = 0 if loop else self._int(request, "offset", 0, 0)
            return Response.json(page_of(offset, size), headers=[("x-total-count", str(total))])
        if style in ("cursor", "cursor_header"):
            size = self._size(request, "limit")
            token = request.arg("cursor" if style == "cursor" else "after")
            start = 0 if loop or not token else self._decode_cursor(token)
            records = page_of(start, size)
            following = self._encode_cursor(start + size) if start + size < total else None
            if style == "cursor":
                return Response.json({"results": records, "paging": {"next_cursor": following}})
            return Response.json({"items": records}, headers=[("x-next-cursor", following)] if following else [])
        return Response.json({"data": {"items": page_of(0, total)}})

    @staticmethod
    def _encode_cursor(offset: int) -> str:
        return base64.urlsafe_b64encode(orjson.dumps({"o": offset})).decode().rstrip("=")

    @staticmethod
    def _decode_cursor(token: str) -> int:
        try:
            data = orjson.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
            return int(data["o"])
        except (ValueError, KeyError, TypeError):
            raise ApiError(error(400, "invalid_cursor", "The cursor is invalid or expired.")) from None

    def _links(self, request: Request, page: int, pages: int) -> list[tuple[str, str]]:
        query = [(k, v) for k, v in request.query if k not in ("page", "api_key")]  # never echo a key
        return link_header(request, query, page, pages, ("prev", "next", "last", "first"))

    async def _read(self, request: Request) -> Response:
        resource = request.params["resource"]
        if resource not in RESOURCES:
            raise ApiError(error(404, "not_found", "No such endpoint."))
        try:
            return Response.json(self.docs[resource][int(request.params["id"])])
        except (KeyError, ValueError):
            raise ApiError(error(404, "not_found", f"No such {resource[:-1]}.")) from None
