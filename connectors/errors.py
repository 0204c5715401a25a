"""Error tables: each provider declares its errors as data; `classify_with` makes its `Classify`.

An `ErrorTable` says where a provider's error body keeps the code and the message (dotted
paths, first found wins: ``"code"``, ``"errors.0.code"``, ``""`` for the whole body), how an
error reads, and which codes and statuses mean what.  `classify_with(table)` turns it into the
one function the `ProviderClient` calls on every response.  A response of 400 or more is read
into an `Answer` and decided, first match wins:

    1. the table's `hook`, when it has one, sees every answer first (see `Hook`)
    2. 429, a `rate_limited` code, or a `wait_statuses` status with Retry-After  -> RateLimited
    3. 5xx, a `transient_statuses` status, a `transient` code or message word   -> TransientError
    4. a `reauth` code or a `reauth_statuses` status                           -> ReauthRequired
    5. an `expired_statuses` status (401 unless the table says otherwise)      -> AuthExpired
    6. an answer to a write (`Answer.write`, set by a hook) whose code is an
       item-level refusal (`refusal`: `duplicate`, `rejected`, `missing`)        -> an ItemError
    7. anything else                                                            -> PermanentError

Codes are matched exactly, or as shell patterns when they hold ``*``
(``woocommerce_rest_*invalid_id``).  The same item-level declarations serve write paths
that read refusals out of a 200 (`refusal`: WooCommerce's batch items).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any

import httpx

from freshd.connectors.http import Classify
from freshd.errors import (
    AuthExpired,
    DuplicateKey,
    ItemError,
    PermanentError,
    ProviderError,
    RateLimited,
    ReauthRequired,
    Rejected,
    TransientError,
)
from freshd.policies.ratelimit import parse_retry_after


@dataclass(frozen=True, slots=True)
class Answer:
    """What one response said, read out of it: the facts a table decides on."""

    status: int | None
    code: str | None = None
    message: str = ""
    detail: str = ""  # said after the message, in brackets (SP-API's `details`)
    retry_after: float | None = None
    write: bool = False  # answering a write: item-level refusals apply


# The hook sees every response with its answer (a 2xx one unread, `code` None) before the table:
# it returns the error itself, an Answer for the table to decide on (the one given, or one it read
# itself: Odoo's JSON-RPC envelope inside an HTTP 200), or None when the response is no error.
Hook = Callable[[httpx.Response, Answer], ProviderError | Answer | None]

Codes = frozenset[str]


@dataclass(frozen=True, slots=True)
class ErrorTable:
    provider: str  # how every error text starts: "WooCommerce"
    code: tuple[str, ...] = ()  # where the body keeps the code; first found wins
    message: tuple[str, ...] = ()  # where it keeps the message ("HTTP <status>" when nowhere)
    detail: tuple[str, ...] = ()  # more words kept after the message
    note_header: tuple[str, str] | None = None  # (header, label) kept at the end: Orion's correlation id
    # {provider} {status} {code} {url} {message}; absent parts drop out with their spaces
    text: str = "{provider} {status} {code}: {message}"
    reauth_text: str | None = None  # how a ReauthRequired reads, when it says more
    rate_limited: Codes = frozenset()
    retry_after_headers: tuple[str, ...] = ("retry-after",)
    wait_statuses: frozenset[int] = frozenset()  # RateLimited when they carry Retry-After (a 503)
    transient: Codes = frozenset()
    transient_messages: tuple[str, ...] = ()  # words (any case) that make an error transient
    transient_statuses: frozenset[int] = frozenset({408, 425})  # retried besides every 5xx
    reauth: Codes = frozenset()
    reauth_statuses: frozenset[int] = frozenset()
    expired_statuses: frozenset[int] = frozenset({401})  # a fresh token may fix them
    # item-level refusals of a write (two-way sync): this record, not the call
    duplicate: Codes = frozenset()  # a unique key is taken -> DuplicateKey
    rejected: Codes = frozenset()  # the target's validation refused -> Rejected
    rejected_statuses: frozenset[int] = frozenset()
    duplicate_messages: re.Pattern[str] | None = None  # a `rejected` refusal naming a unique key
    missing: Codes = frozenset()  # the record is gone -> ItemError
    hook: Hook | None = field(default=None, compare=False)


def classify_with(table: ErrorTable) -> Classify:
    """The `Classify` a ProviderClient takes, deciding by `table` (see the module docstring)."""

    def classify(response: httpx.Response) -> ProviderError | None:
        status = response.status_code
        if status < 400 and table.hook is None:
            return None
        answer = read(table, response) if status >= 400 else Answer(status)
        if table.hook is not None:
            decided = table.hook(response, answer)
            if not isinstance(decided, Answer):
                return decided
            answer = decided
        return decide(table, answer, response)

    return classify


def read(table: ErrorTable, response: httpx.Response) -> Answer:
    """The code, message, detail and Retry-After of an error response."""
    try:
        body: Any = response.json()
    except ValueError:
        body = None
    text = response.text if body is None else None
    waits = (response.headers.get(name) for name in table.retry_after_headers)
    return Answer(
        response.status_code,
        code=_first(body, table.code, text),
        message=_first(body, table.message, text) or f"HTTP {response.status_code}",
        detail=_first(body, table.detail, text) or "",
        retry_after=parse_retry_after(next((w for w in waits if w), None)),
    )


def decide(table: ErrorTable, answer: Answer, response: httpx.Response | None = None) -> ProviderError:
    """The table's verdict on one answer."""
    status, code = answer.status or 0, answer.code
    text = describe(table, answer, response)
    if status == 429 or _matches(table.rate_limited, code) \
            or (status in table.wait_statuses and answer.retry_after is not None):
        return RateLimited(text, retry_after=answer.retry_after, status=answer.status, code=code)
    said = answer.message.lower()
    if status >= 500 or status in table.transient_statuses or _matches(table.transient, code) \
            or any(word.lower() in said for word in table.transient_messages):
        return TransientError(text, status=answer.status, code=code)
    if _matches(table.reauth, code) or status in table.reauth_statuses:
        if table.reauth_text is not None:
            text = describe(table, answer, response, table.reauth_text)
        return ReauthRequired(text, status=answer.status, code=code)
    if status in table.expired_statuses:
        return AuthExpired(text, status=answer.status, code=code)
    if answer.write:
        refused = refusal(table, code, answer.status, answer.message)
        if refused is not None:
            return refused(text, status=answer.status, code=code)
    return PermanentError(text, status=answer.status, code=code)


def refusal(table: ErrorTable, code: str | None, status: int | None, message: str) -> type[ItemError] | None:
    """What an item-level refusal of a write is, by the table; None: not one it declares."""
    if _matches(table.duplicate, code):
        return DuplicateKey
    if _matches(table.rejected, code) or (status is not None and status in table.rejected_statuses):
        pattern = table.duplicate_messages
        return DuplicateKey if pattern is not None and pattern.search(message) else Rejected
    if _matches(table.missing, code):
        return ItemError
    return None


def describe(table: ErrorTable, answer: Answer, response: httpx.Response | None = None,
             template: str | None = None) -> str:
    """An error's text: the table's template, the detail in brackets, then the noted header."""
    url = ""
    if response is not None:
        with contextlib.suppress(RuntimeError):  # a response built without its request (tests)
            url = str(response.request.url.copy_with(query=None))
    status = answer.status if answer.status is not None and answer.status >= 400 else ""
    # the provider's message goes in last: only the template's own spacing is tidied
    shape = (template or table.text).format(provider=table.provider, status=status, code=answer.code or "",
                                             url=url, message="\0")
    shape = re.sub(r" +", " ", shape).replace(" :", ":").replace("( ", "(").replace(" )", ")").strip()
    text = shape.replace("\0", answer.message) if answer.message else shape.replace("\0", "").rstrip(": ")
    if answer.detail:
        text += f" ({answer.detail})"
    if table.note_header is not None and response is not None:
        header, label = table.note_header
        if noted := response.headers.get(header):
            text += f" ({label} {noted})"
    return text


def _matches(codes: Collection[str], code: str | None) -> bool:
    if code is None or not codes:
        return False
    return code in codes or any("*" in pattern and fnmatchcase(code, pattern) for pattern in codes)


def _first(body: Any, paths: tuple[str, ...], text: str | None) -> str | None:
    """The first path that leads to a value in `body` ("" is the whole body; a body that is no
    JSON is its text), as a string of at most 200 characters for a whole body."""
    for path in paths:
        if not path:
            whole = text if body is None else str(body)
            if whole:
                return whole[:200]
            continue
        value = body
        for step in path.split("."):
            if isinstance(value, dict):
                value = value.get(step)
            elif isinstance(value, list) and step.isdigit() and int(step) < len(value):
                value = value[int(step)]
            else:
                value = None
                break
        if value is not None and not isinstance(value, dict | list) and value != "":
            return str(value)
    return None
