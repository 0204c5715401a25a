"""The admin protocol, v1: newline-delimited JSON over a Unix stream socket.

    request  {"v": 1, "id": <int|str>, "cmd": "<name>", "args": {...}}
    reply    {"v": 1, "id": <same>, "ok": true, "result": <json>}
         or  {"v": 1, "id": <same>, "ok": false, "error": {"code": "<code>", "message": "<one line>"}}
    stream   {"v": 1, "id": <same>, "event": <json>} ... then a final reply (subscriptions: `watch`)

One line is at most MAX_MESSAGE_BYTES.  Every command's arguments are
declared as data in COMMANDS; `parse_request` checks a line against them and
raises AdminError with a stable code and a message naming the field.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import orjson

from freshd.errors import AdminError

API_VERSION = 1
MAX_MESSAGE_BYTES = 1 << 20


class ErrorCode(StrEnum):
    BAD_JSON = "bad_json"
    TOO_LARGE = "too_large"
    BAD_REQUEST = "bad_request"
    UNKNOWN_COMMAND = "unknown_command"
    UNSUPPORTED_VERSION = "unsupported_version"
    NOT_FOUND = "not_found"
    CONFLICT = "conflict"
    FORBIDDEN = "forbidden"
    TIMEOUT = "timeout"
    UNAVAILABLE = "unavailable"
    INTERNAL = "internal"


@dataclass(frozen=True, slots=True)
class Peer:
    """The caller, from SO_PEERCRED."""

    pid: int
    uid: int
    gid: int


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is asking, and what they may see: `tenants` None means every tenant (an administrator).
    Over the HTTP API the peer is HTTP_PEER and `token_id` names the bearer token."""

    peer: Peer
    tenants: frozenset[str] | None = None
    token_id: int | None = None

    def sees(self, tenant: str) -> bool:
        return self.tenants is None or tenant in self.tenants

    @property
    def who(self) -> str:
        """For the activity log: "uid 1000", or "API token 3"."""
        return f"API token {self.token_id}" if self.token_id is not None else f"uid {self.peer.uid}"


HTTP_PEER = Peer(pid=0, uid=-1, gid=-1)  # an HTTP API caller: no local process behind it


@dataclass(frozen=True, slots=True)
class Request:
    v: int
    id: int | str | None
    cmd: str
    args: dict[str, Any]


# --- argument specs ------------------------------------------------------------------------------

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True, slots=True)
class Arg:
    kind: str  # "str" | "name" | "bool" | "int" | "str_map" | "object" | "str_list"
    required: bool = False
    default: Any = None
    minimum: int | None = None
    maximum: int | None = None


_NAME = Arg("name", required=True)
_JOB = {"id": Arg("int", required=True, minimum=1)}

COMMANDS: dict[str, dict[str, Arg]] = {
    "status": {},
    "connections.list": {},
    "connections.show": {"name": _NAME},
    "connections.add": {
        "name": _NAME,
        "provider": Arg("str", required=True),
        "base_url": Arg("str", required=True),
        "credentials": Arg("str_map", required=True),
        "tenant": Arg("name", default="default"),
        "options": Arg("object", default={}),
        # probe the provider first (one cheap call): refused credentials or an unreachable host store nothing
        "check": Arg("bool", default=False),
    },
    # deletes the connection's data (records, cursors, jobs): refused without purge = true
    "connections.remove": {"name": _NAME, "purge": Arg("bool", default=False)},
    # merged into the stored credentials ("" removes a key); clears tokens, ends reauth_required
    "connections.set_credential": {"name": _NAME, "credentials": Arg("str_map", required=True)},
    # confirm_deletes: this (full) sync may apply a reconciliation over [sync] max_delete_share
    # entities: only these; since: re-read them from this date (ISO 8601); dry_run: count, write nothing
    "sync": {"name": _NAME, "full": Arg("bool", default=False), "force": Arg("bool", default=False),
             "confirm_deletes": Arg("bool", default=False), "entities": Arg("str_list"),
             "since": Arg("str"), "dry_run": Arg("bool", default=False)},
    # a sync if the data is missing or stale (or the live job), else the data's age; idempotent
    "ensure": {"name": _NAME},
    # daily statistics (the cleanup sweep computes each day's), newest first
    "stats": {"days": Arg("int", default=7, minimum=1, maximum=3660), "connection": Arg("name"),
              "tenant": Arg("name")},
    "members": {},
    "consumers.add": {"app": Arg("name", required=True), "tenant": Arg("name", required=True),
                      "entities": Arg("str_list"), "skip_history": Arg("bool", default=False)},
    "consumers.list": {},
    "consumers.status": {"app": Arg("name", required=True)},
    "consumers.backfill": {"app": Arg("name", required=True), "since": Arg("str"), "entities": Arg("str_list"),
                           "dry_run": Arg("bool", default=False)},
    "consumers.remove": {"app": Arg("name", required=True)},
    "consumers.pause": {"app": Arg("name", required=True)},
    "consumers.resume": {"app": Arg("name", required=True)},
    "consumers.cancel": {"app": Arg("name", required=True)},
    # two-way sync (docs/TWO-WAY.md): spec is the pair's declaration {"entities": {name: overrides}}
    "pairs.add": {"name": _NAME, "left": _NAME, "right": _NAME, "entities": Arg("str_list"), "spec": Arg("object")},
    "pairs.list": {},
    "twoway.start": {"pair": _NAME, "entities": Arg("str_list"), "dry_run": Arg("bool", default=False),
                     "batch_size": Arg("int", minimum=1, maximum=200),
                     "batch_delay": Arg("int", minimum=0, maximum=3600)},
    "twoway.status": _JOB,
    "twoway.runs": {"pair": Arg("name"), "limit": Arg("int", default=50, minimum=1, maximum=1000)},
    "twoway.pause": _JOB,
    "twoway.resume": _JOB,
    "twoway.cancel": _JOB,
    "twoway.log": {"id": Arg("int", required=True, minimum=1), "limit": Arg("int", default=100, minimum=1,
                                                                           maximum=10000)},
    "conflicts.list": {"pair": Arg("name"), "type": Arg("str"), "unresolved": Arg("bool", default=False),
                       "limit": Arg("int", default=200, minimum=1, maximum=10000)},
    "conflicts.show": _JOB,
    # take: "left" | "right"; values: {field: value} (the merged value), with or without take
    "conflicts.resolve": {"id": Arg("int", required=True, minimum=1), "take": Arg("str"), "values": Arg("object")},
    "jobs": {
        "connection": Arg("name"),
        "tenant": Arg("name"),
        "status": Arg("str"),
        "limit": Arg("int", default=50, minimum=1, maximum=1000),
        "offset": Arg("int", default=0, minimum=0),
    },
    "job": _JOB,
    # a subscription: event frames {"v", "id", "event": {...}} until the job ends or the client leaves
    "watch": {"id": Arg("int", minimum=1), "all": Arg("bool", default=False)},
    "pause": _JOB,
    "resume": _JOB,
    "cancel": _JOB,
    "retry": _JOB,
    "health": {},
    # HTTP API bearer tokens (administrators only): the token is in tokens.add's reply, and only there
    "tokens.add": {"tenant": Arg("name", required=True), "label": Arg("str")},
    "tokens.list": {"tenant": Arg("name")},
    "tokens.revoke": {"id": Arg("int", required=True, minimum=1)},
    "schedule": {},
    "trigger": {"sweep": _NAME},
}


def _bad(message: str) -> AdminError:
    return AdminError(ErrorCode.BAD_REQUEST, message)


def _check(cmd: str, field: str, spec: Arg, value: Any) -> Any:
    where = f"{cmd}: argument {field!r}"
    match spec.kind:
        case "str" | "name":
            if not isinstance(value, str) or not value:
                raise _bad(f"{where} must be a non-empty string")
            if spec.kind == "name" and not NAME.match(value):
                raise _bad(f"{where} must be 1-64 letters, digits, '.', '_' or '-' (got {value!r})")
        case "bool":
            if not isinstance(value, bool):
                raise _bad(f"{where} must be true or false")
        case "int":
            if isinstance(value, bool) or not isinstance(value, int):
                raise _bad(f"{where} must be an integer")
            if spec.minimum is not None and value < spec.minimum:
                raise _bad(f"{where} must be >= {spec.minimum}")
            if spec.maximum is not None and value > spec.maximum:
                raise _bad(f"{where} must be <= {spec.maximum}")
        case "str_map":
            if not isinstance(value, dict) or not all(
                isinstance(k, str) and k and isinstance(v, str) for k, v in value.items()
            ):
                raise _bad(f"{where} must be an object of string keys to string values")
        case "object":
            if not isinstance(value, dict):
                raise _bad(f"{where} must be an object")
        case "str_list":
            if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
                raise _bad(f"{where} must be a non-empty list of non-empty strings")
    return value


def parse_request(line: bytes) -> Request:
    """Decode and validate one request line; raise AdminError (with its code) on anything wrong."""
    if len(line) > MAX_MESSAGE_BYTES:
        raise AdminError(ErrorCode.TOO_LARGE, f"request larger than {MAX_MESSAGE_BYTES} bytes")
    try:
        data = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise AdminError(ErrorCode.BAD_JSON, f"malformed JSON: {exc}") from None
    if not isinstance(data, dict):
        raise _bad("a request must be a JSON object")
    version = data.get("v")
    if version != API_VERSION:
        raise AdminError(ErrorCode.UNSUPPORTED_VERSION, f"API version {version!r} is not supported; use {API_VERSION}")
    request_id = data.get("id")
    if request_id is not None and (isinstance(request_id, bool) or not isinstance(request_id, int | str)):
        raise _bad("'id' must be an integer or a string")
    cmd = data.get("cmd")
    if not isinstance(cmd, str):
        raise _bad("'cmd' must be a string")
    specs = COMMANDS.get(cmd)
    if specs is None:
        raise AdminError(ErrorCode.UNKNOWN_COMMAND, f"unknown command {cmd!r}; known: {', '.join(sorted(COMMANDS))}")
    raw = data.get("args", {})
    if not isinstance(raw, dict):
        raise _bad("'args' must be an object")
    unknown = sorted(set(raw) - set(specs))
    if unknown:
        raise _bad(f"{cmd}: unknown argument(s) {', '.join(map(repr, unknown))}")
    args: dict[str, Any] = {}
    for field, spec in specs.items():
        if field in raw and raw[field] is not None:
            args[field] = _check(cmd, field, spec, raw[field])
        elif spec.required:
            raise _bad(f"{cmd}: missing argument {field!r}")
        elif spec.default is not None:
            args[field] = spec.default
    return Request(API_VERSION, request_id, cmd, args)


def ok_reply(request_id: Any, result: Any) -> bytes:
    return orjson.dumps({"v": API_VERSION, "id": request_id, "ok": True, "result": result}) + b"\n"


def error_reply(request_id: Any, code: str, message: str) -> bytes:
    one_line = " ".join(message.split())
    return orjson.dumps(
        {"v": API_VERSION, "id": request_id, "ok": False, "error": {"code": str(code), "message": one_line}}
    ) + b"\n"


def event_frame(request_id: Any, event: Any) -> bytes:
    return orjson.dumps({"v": API_VERSION, "id": request_id, "event": event}) + b"\n"
