"""Log output as journald or a terminal shows it: JSON lines, the stdlib bridge, redaction."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

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


def test_a_fleet_start_registering_every_connections_credentials_does_not_copy_the_secret_set() -> None:
    """10,000 connections with their own credentials register 20,000 values at start-up: each add
    copied every value registered so far (O(n²): 16 s of CPU, long enough for the daemon to lose
    its own leases).  An add now stores one prefix's entry in place, and masking still finds all."""
    from freshd.logs import _SecretSet

    found = _SecretSet()
    table = found.by_prefix
    values = [f"cs_{n:06d}{secret()}" for n in range(2000)]
    for value in values:
        found.add(value)
    assert found.by_prefix is table, "an add copied the whole set"
    assert found.count == 2000
    assert found.mask(" ".join(values[::499])) == " ".join([REDACTED] * 5)


# -- journald priorities and the console ------------------------------------------------------------------


def _journal_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str = "stderr") -> TextIO:
    """A real file standing in for the stream systemd connects to the journal, named by $JOURNAL_STREAM."""
    stream = (tmp_path / name).open("w", encoding="utf-8")
    stat = os.fstat(stream.fileno())
    monkeypatch.setenv("JOURNAL_STREAM", f"{stat.st_dev}:{stat.st_ino}")
    return stream


def test_journal_stream_lines_carry_syslog_priority(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`journalctl -p err` filters on the <N> prefix (sd-daemon(3)); the rest of the line is the usual JSON."""
    with _journal_file(tmp_path, monkeypatch) as stream:
        configure_logging("debug", "auto", stream)
        log = structlog.get_logger("freshd.x")
        log.debug("d")
        log.info("i")
        log.warning("w")
        log.error("e")
        log.critical("c")
        logging.getLogger("psycopg").error("from a library")
    written = (tmp_path / "stderr").read_text().splitlines()
    prefixes = [line[:3] for line in written]
    assert prefixes == ["<7>", "<6>", "<4>", "<3>", "<2>", "<3>"]
    events = [json.loads(line[3:])["event"] for line in written]
    assert events == ["d", "i", "w", "e", "c", "from a library"]


def test_no_priority_prefix_on_another_stream(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """$JOURNAL_STREAM inherited by a process whose stderr goes elsewhere (a file, a pipe) is not ours."""
    _journal_file(tmp_path, monkeypatch, "journal").close()
    with (tmp_path / "other").open("w", encoding="utf-8") as stream:
        configure_logging("info", "auto", stream)
        structlog.get_logger("freshd.x").error("e")
    assert json.loads((tmp_path / "other").read_text())["event"] == "e"
    monkeypatch.setenv("JOURNAL_STREAM", "garbage")
    with (tmp_path / "other").open("w", encoding="utf-8") as stream:
        configure_logging("info", "auto", stream)
        structlog.get_logger("freshd.x").error("e")
    assert (tmp_path / "other").read_text().startswith("{")


def test_multi_line_console_output_is_prefixed_on_every_line() -> None:
    stream = io.StringIO()
    configure_logging("info", "console", stream, journal=True)
    try:
        raise ValueError("boom")
    except ValueError:
        structlog.get_logger("freshd.x").exception("failed")
    written = stream.getvalue().splitlines()
    assert len(written) > 2 and all(line.startswith("<3>") for line in written)


def test_job_progress_on_a_console_is_one_compact_line() -> None:
    stream = io.StringIO()
    configure_logging("info", "console", stream)
    progress = {name: {"total": 500, "processed": 120, "failed": 1, "skipped": 0, "state": "running"}
                for name in ("orders", "customers", "products", "coupons")}
    structlog.get_logger("freshd.sync").info("job.progress", status="running", percent=24.0, eta_seconds=30,
                                             progress=progress)
    (line,) = stream.getvalue().splitlines()
    assert "job.progress" in line and "percent=24.0" in line and "processed=480" in line and "failed=4" in line
    assert "customers" not in line and len(line) < 200


def test_job_progress_in_json_keeps_the_whole_table(out: io.StringIO) -> None:
    progress = {"orders": {"total": 5, "processed": 2, "failed": 0, "skipped": 0, "state": "running"}}
    structlog.get_logger("freshd.sync").info("job.progress", percent=40.0, progress=progress)
    (line,) = lines(out)
    assert line["progress"] == progress


def test_the_daemon_does_not_load_rich_through_structlog() -> None:
    """structlog imports rich when it is installed (freshctl needs it) for tracebacks the daemon never
    renders: 180 ms of every start and 4 MB of every daemon (bench/fleet.py, bench/sync_woocommerce.py)."""
    probe = ("import sys, freshd.app, freshd.cli, structlog.dev; loaded = 'rich' in sys.modules\n"
             "from rich.console import Console  # still importable afterwards\n"
             "print(loaded)")
    result = subprocess.run([sys.executable, "-c", probe], check=False, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
