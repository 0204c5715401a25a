"""Log output as journald or a terminal shows it: JSON lines, the stdlib bridge, redaction."""

from __future__ import annotations

import io
import json
import logging
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from freshd.logs import REDACTED, _StdlibBridge, configure_logging, is_secret_key, register_secret


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    yield
    structlog.reset_defaults()
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, _StdlibBridge):
            root.removeHandler(handler)
    root.setLevel(logging.WARNING)


@pytest.fixture
def out() -> io.StringIO:
    stream = io.StringIO()
    configure_logging("info", "auto", stream)  # a StringIO is not a TTY: JSON
    return stream


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def secret() -> str:
    return f"s3cr3t-{uuid.uuid4().hex}"


def test_json_lines_with_timestamp_level_logger_and_context(out: io.StringIO) -> None:
    log = structlog.get_logger("freshd.sync")
    with structlog.contextvars.bound_contextvars(connection="shop-eu", job=42):
        log.info("job.started", kind="full")
    log.debug("not shown at info")
    (line,) = lines(out)
    assert line["event"] == "job.started"
    assert line["level"] == "info"
    assert line["logger"] == "freshd.sync"
    assert line["timestamp"].endswith("Z") and "T" in line["timestamp"]
    assert (line["connection"], line["job"], line["kind"]) == ("shop-eu", 42, "full")
    assert list(line)[:4] == ["timestamp", "level", "logger", "event"]


def test_console_format_is_not_json() -> None:
    stream = io.StringIO()
    configure_logging("debug", "console", stream)
    structlog.get_logger("freshd.x").debug("hello.console", n=1)
    text = stream.getvalue()
    assert "hello.console" in text and "n=1" in text
    with pytest.raises(json.JSONDecodeError):
        json.loads(text.splitlines()[0])


def test_level_filters(out: io.StringIO) -> None:
    configure_logging("error", "json", out)
    log = structlog.get_logger("freshd.x")
    log.warning("dropped")
    log.error("kept")
    logging.getLogger("psycopg").warning("dropped too")
    assert [line["event"] for line in lines(out)] == ["kept"]


def test_stdlib_bridged_at_warning_and_above(out: io.StringIO) -> None:
    logging.getLogger("hypercorn.error").info("Running on http://... (quiet)")
    logging.getLogger("apscheduler.scheduler").warning("job %s missed", "cleanup")
    (line,) = lines(out)
    assert (line["event"], line["logger"], line["level"]) == ("job cleanup missed", "apscheduler.scheduler",
                                                                "warning")
    assert "timestamp" in line


def test_secret_looking_keys_are_redacted_at_any_depth(out: io.StringIO) -> None:
    structlog.get_logger("freshd.x").info(
        "request",
        password="p", api_key="k", Authorization="Bearer x", consumer_secret="c", refresh_token="r",
        credentials={"user": "u"},
        headers=[("Authorization", "Basic abc"), ("Accept", "json")],
        nested={"deeper": [{"access_token": "t", "ok": 1}], "cookie": "c"},
        token_expires_at="2026-01-01", url="https://x.io/",
    )
    (line,) = lines(out)
    for key in ("password", "api_key", "Authorization", "consumer_secret", "refresh_token", "credentials"):
        assert line[key] == REDACTED, key
    assert line["headers"] == [["Authorization", REDACTED], ["Accept", "json"]]
    assert line["nested"] == {"deeper": [{"access_token": REDACTED, "ok": 1}], "cookie": REDACTED}
    assert line["token_expires_at"] == "2026-01-01"  # about a token, not the token
    assert line["url"] == "https://x.io/"


@pytest.mark.parametrize(("name", "secret_key"), [
    ("password", True), ("db_password", True), ("X-Api-Key", True), ("apikey", True), ("session_id", True),
    ("consumer_key", True), ("client_secret", True), ("set-cookie", True), ("token", True),
    ("connection", False), ("job", False), ("primary_key", False), ("token_type", False),
    ("tokens_url", False),
])
def test_is_secret_key(name: str, secret_key: bool) -> None:
    assert is_secret_key(name) is secret_key


def test_registered_secret_masked_everywhere(out: io.StringIO) -> None:
    value = secret()
    register_secret(value)
    log = structlog.get_logger("freshd.x")
    log.info(f"event mentions {value}", note=f"inside {value}!", items=[value, {"x": value}],
             obj=ValueError(value))
    try:
        raise RuntimeError(f"provider said {value}")
    except RuntimeError:
        log.exception("sync.failed")
        logging.getLogger("httpx").error("stdlib %s", value, exc_info=True)
    text = out.getvalue()
    assert value not in text
    first, second, third = lines(out)
    assert first["event"] == f"event mentions {REDACTED}"
    assert first["note"] == f"inside {REDACTED}!"
    assert first["items"] == [REDACTED, {"x": REDACTED}]
    assert first["obj"] == REDACTED
    assert f"provider said {REDACTED}" in second["exception"]
    assert second["level"] == "error"
    assert third["event"] == f"stdlib {REDACTED}" and f"provider said {REDACTED}" in third["exception"]


def test_short_secrets_ignored(out: io.StringIO) -> None:
    register_secret("abc")
    structlog.get_logger("freshd.x").info("abc is fine", n="abc")
    (line,) = lines(out)
    assert (line["event"], line["n"]) == ("abc is fine", "abc")


def test_register_secret_is_thread_safe(out: io.StringIO) -> None:
    values = [secret() for _ in range(200)]
    threads = [threading.Thread(target=lambda chunk=values[i::8]: [register_secret(v) for v in chunk])
               for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    structlog.get_logger("freshd.x").info("all", values=values)
    assert lines(out)[0]["values"] == [REDACTED] * 200


def test_unknown_level_or_format_refused() -> None:
    with pytest.raises(ValueError):
        configure_logging("loud", "json", io.StringIO())
    with pytest.raises(ValueError):
        configure_logging("info", "xml", io.StringIO())


def test_a_fleet_of_secrets_with_common_prefixes_is_masked(out: io.StringIO) -> None:
    """Thousands of tokens sharing a provider prefix (Amazon's `Atza|`), and short ones too."""
    tokens = [f"Atza|IwEBI{n:05d}{secret()}" for n in range(3000)]
    for token in tokens:
        register_secret(token)
    register_secret("pin42")
    register_secret(tokens[7][:20])  # a value that is a prefix of another: the longer one wins
    structlog.get_logger("freshd.x").info("t", a=f"x{tokens[7]}y{tokens[2999]}", b="pin42!", c=tokens[7][:20])
    line = lines(out)[-1]
    assert line["a"] == f"x{REDACTED}y{REDACTED}"
    assert line["b"] == f"{REDACTED}!" and line["c"] == REDACTED
