"""The admin protocol as JSON Schemas (draft 2020-12), generated from the specs in protocol.py.

    python -m freshd.admin.schema docs/schemas     (re)write the published files

Published in docs/schemas/ so clients in other languages can check what they send and read:
request.json (the envelope; `args` checked per command), reply.json (a final reply, ok or not),
event.json (a subscription's event frame), error.json (the error object) and
commands/<cmd>.json (each command's arguments).  tests/test_client.py fails when the
published files differ from what this module generates.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from freshd.admin.protocol import API_VERSION, COMMANDS, NAME, Arg, ErrorCode

DRAFT = "https://json-schema.org/draft/2020-12/schema"


def _arg_schema(spec: Arg) -> dict[str, Any]:
    match spec.kind:
        case "str":
            out: dict[str, Any] = {"type": "string", "minLength": 1}
        case "name":
            out = {"type": "string", "pattern": NAME.pattern}
        case "bool":
            out = {"type": "boolean"}
        case "int":
            out = {"type": "integer"}
            if spec.minimum is not None:
                out["minimum"] = spec.minimum
            if spec.maximum is not None:
                out["maximum"] = spec.maximum
        case "str_map":
            out = {"type": "object", "propertyNames": {"minLength": 1}, "additionalProperties": {"type": "string"}}
        case "object":
            out = {"type": "object"}
        case "str_list":
            out = {"type": "array", "minItems": 1, "items": {"type": "string", "minLength": 1}}
        case _:
            raise ValueError(f"no JSON Schema for argument kind {spec.kind!r}")
    if not spec.required:
        out["type"] = [out["type"], "null"]  # an optional argument sent as null counts as absent
        if spec.default is not None:
            out["default"] = spec.default
    return out


def command_schema(cmd: str) -> dict[str, Any]:
    specs = COMMANDS[cmd]
    return {
        "$schema": DRAFT,
        "$id": f"commands/{cmd}.json",
        "title": f"arguments of the admin command {cmd!r}",
        "type": "object",
        "properties": {field: _arg_schema(spec) for field, spec in specs.items()},
        "required": [field for field, spec in specs.items() if spec.required],
        "additionalProperties": False,
    }


def _request_id() -> dict[str, Any]:
    return {"type": ["integer", "string", "null"], "description": "echoed in the reply"}


def schemas() -> dict[str, dict[str, Any]]:
    """Relative file name -> schema, for every published file."""
    version = {"const": API_VERSION}
    error: dict[str, Any] = {
        "$schema": DRAFT, "$id": "error.json", "title": "an admin error",
        "type": "object",
        "properties": {"code": {"enum": [str(code) for code in ErrorCode]},
                       "message": {"type": "string", "description": "one line, for people"}},
        "required": ["code", "message"],
    }
    request: dict[str, Any] = {
        "$schema": DRAFT, "$id": "request.json",
        "title": f"an admin request (protocol v{API_VERSION}): one line of JSON, at most 1 MiB",
        "type": "object",
        "properties": {"v": version, "id": _request_id(), "cmd": {"enum": sorted(COMMANDS)},
                       "args": {"type": "object", "default": {}}},
        "required": ["v", "cmd"],
        "allOf": [{"if": {"properties": {"cmd": {"const": cmd}}},
                   "then": {"properties": {"args": {"$ref": f"commands/{cmd}.json"}}}} for cmd in sorted(COMMANDS)],
    }
    reply: dict[str, Any] = {
        "$schema": DRAFT, "$id": "reply.json",
        "title": "the final reply to a request (a subscription's event frames come before it: event.json)",
        "oneOf": [
            {"type": "object", "properties": {"v": version, "id": _request_id(), "ok": {"const": True},
                                              "result": {}}, "required": ["v", "id", "ok", "result"]},
            {"type": "object", "properties": {"v": version, "id": _request_id(), "ok": {"const": False},
                                              "error": {"$ref": "error.json"}}, "required": ["v", "id", "ok", "error"]},
        ],
    }
    event: dict[str, Any] = {
        "$schema": DRAFT, "$id": "event.json",
        "title": "one event of a subscription (`watch`): {\"job\": <job>}; a final reply (reply.json) ends it",
        "type": "object",
        "properties": {"v": version, "id": _request_id(),
                       "event": {"type": "object", "properties": {"job": {"type": "object"}}, "required": ["job"]}},
        "required": ["v", "id", "event"],
    }
    out: dict[str, dict[str, Any]] = {"error.json": error, "request.json": request, "reply.json": reply,
                                      "event.json": event}
    out.update({f"commands/{cmd}.json": command_schema(cmd) for cmd in sorted(COMMANDS)})
    return out


def render(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2) + "\n"


def write(directory: Path) -> list[Path]:
    """Write every schema under `directory`, removing stale command files; returns the files written."""
    (directory / "commands").mkdir(parents=True, exist_ok=True)
    wanted = schemas()
    for old in (directory / "commands").glob("*.json"):
        if f"commands/{old.name}" not in wanted:
            old.unlink()
    written = []
    for name, schema in wanted.items():
        path = directory / name
        path.write_text(render(schema))
        written.append(path)
    return written


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("docs/schemas")
    print(f"wrote {len(write(target))} schemas to {target}")
