"""Logging: structlog for freshd's own events, stdlib logging bridged into the same output.

    configure_logging(level, fmt, stream)   once at start (again in tests)
    register_secret(value)                  mask this string wherever it would be logged

Output:

* ``fmt="json"``, or ``"auto"`` when the stream is not a TTY (journald, files): one JSON object
  per line with ``timestamp`` (ISO 8601, UTC), ``level``, ``logger``, ``event``, then the
  bound context (``connection``, ``job`` ...) and the call's own keys.
* ``fmt="console"``, or ``"auto"`` on a TTY: structlog's readable renderer; ``job.progress``
  is one compact line there (status, percent, ETA, records processed), not the per-entity table.
* Under systemd (``$JOURNAL_STREAM`` names the stream's device and inode), every line starts
  with its syslog priority, ``<3>`` for error ... ``<7>`` for debug (sd-daemon(3)), so
  ``journalctl -p err`` shows only errors; the rest of the line is unchanged.
* Other libraries (hypercorn, psycopg, apscheduler, ``warnings``) log through stdlib logging;
  their records at WARNING and above (and at or above `level`) come out in the same format,
  through the same redaction, on the same stream.

Redaction runs last before rendering, on every event:

* a key that looks secret (``password``, ``token``, ``api_key``, ``authorization``,
  ``consumer_secret``, ``cookie``, ``credentials`` ...; see `is_secret_key`) has its value
  replaced by ``"[redacted]"``, at any depth in dicts and lists (and ``(name, value)`` pairs,
  as in header lists);
* any registered secret (`register_secret`; strings shorter than 4 characters are ignored) is
  masked wherever it appears in a string value, including the event text and the formatted
  traceback (``exception``), and in the text of other objects (an exception passed as a value).

Context: use structlog's own contextvars,
``with structlog.contextvars.bound_contextvars(connection=name, job=job_id): ...``.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import sys
import threading
import urllib.parse
from collections.abc import Iterable, Mapping
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

__all__ = ["REDACTED", "configure_logging", "is_journal_stream", "is_secret_key", "redact", "register_secret", "scrub",
           "scrub_json"]

REDACTED = "[redacted]"
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
          "error": logging.ERROR, "critical": logging.CRITICAL}
_MIN_SECRET_LENGTH = 4
_MAX_DEPTH = 10

# -- what counts as secret -------------------------------------------------------------------------------

_SECRET_KEY = re.compile(
    r"password|passwd|secret|token|api_?key|authorization|credential|cookie|session_?id|private_?key"
    r"|consumer_key|signature"
)
# ... unless the name says it is about the secret, not the secret itself (token_expires_at)
_NOT_SECRET_SUFFIX = re.compile(r"_(at|in|interval|count|type|url|expires|expiry|kind|source)$")
_RESERVED = frozenset({"event", "level", "timestamp", "logger", "exception", "exc_info"})

class _SecretSet:
    """Registered secret values, found in a text by their first 12 characters.

    A fleet registers tens of thousands of values (credentials, rotating tokens), and
    providers give them common prefixes (``cs_``, ``Atza|``): scanning a text once with a
    dict lookup per position costs O(len(text)), where trying every value would cost
    O(values) per logged string.  The few values shorter than the prefix are tried one by
    one.  Readers never take the lock: a writer stores a prefix's new tuple into the dict in
    place (one atomic store), so an add costs O(values under that prefix), not a copy of every
    registered value (a fleet's start-up registering 20,000 credentials was O(n²): 16 s).
    """

    PREFIX = 12

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.by_prefix: dict[str, tuple[str, ...]] = {}  # longest first within a prefix
        self.short: tuple[str, ...] = ()  # longest first
        self.count = 0

    def add(self, value: str) -> None:
        with self.lock:
            if len(value) < self.PREFIX:
                if value not in self.short:
                    self.short = tuple(sorted((*self.short, value), key=len, reverse=True))
                    self.count += 1
                return
            prefix = value[:self.PREFIX]
            known = self.by_prefix.get(prefix, ())
            if value in known:
                return
            self.by_prefix[prefix] = tuple(sorted((*known, value), key=len, reverse=True))
            self.count += 1

    def mask(self, text: str) -> str:
        by_prefix, short, width = self.by_prefix, self.short, self.PREFIX
        masked = text
        if by_prefix and len(text) >= width:
            out: list[str] = []
            start = i = 0
            end = len(text) - width + 1
            while i < end:
                candidates = by_prefix.get(text[i:i + width])
                if candidates is not None:
                    found = next((c for c in candidates if text.startswith(c, i)), None)
                    if found is not None:
                        out.append(text[start:i])
                        out.append(REDACTED)
                        i = start = i + len(found)
                        continue
                i += 1
            if out:
                out.append(text[start:])
                masked = "".join(out)
        for secret in short:
            if secret in masked:
                masked = masked.replace(secret, REDACTED)
        return masked

    def __bool__(self) -> bool:
        return self.count > 0


_secrets = _SecretSet()
_UNRESERVED = re.compile(r"[A-Za-z0-9_.~-]*")  # what percent-encoding leaves as it is (RFC 3986 unreserved)


def scrub_json(value: Any) -> Any:
    """A JSON-able value with secret-looking keys and registered secrets masked (activity details)."""
    return _clean(value, _secrets, 0)


def register_secret(value: str) -> None:
    """Mask `value` in every later log line and scrubbed text (thread-safe; values under 4 characters
    are ignored), in the forms a provider may echo it back: as is, percent-encoded (a query string,
    form or path) and base64 (an Authorization header)."""
    if not isinstance(value, str) or len(value) < _MIN_SECRET_LENGTH:
        return
    if _UNRESERVED.fullmatch(value):  # most keys and tokens: every percent-encoding is the value itself
        forms = {value, base64.b64encode(value.encode()).decode()}
    else:
        forms = {value, urllib.parse.quote(value, safe=""), urllib.parse.quote_plus(value),
                 urllib.parse.quote(value, safe="/"), base64.b64encode(value.encode()).decode()}
    for form in forms:
        _secrets.add(form)


def scrub(text: str) -> str:
    """`text` with every registered secret masked: for error texts before they are stored, logged
    or returned (a provider that echoes the request URL echoes its query-string credentials)."""
    return _secrets.mask(text) if _secrets and text else text


def is_secret_key(name: str) -> bool:
    """Whether a key's name says its value is a secret (``consumer_secret``, ``Authorization`` ...)."""
    key = name.lower().replace("-", "_")
    return bool(_SECRET_KEY.search(key)) and not _NOT_SECRET_SUFFIX.search(key)


def _clean(value: Any, secrets: _SecretSet, depth: int) -> Any:
    if isinstance(value, str):
        return secrets.mask(value) if secrets else value
    if value is None or isinstance(value, bool | int | float):
        return value
    if depth >= _MAX_DEPTH:
        return REDACTED
    if isinstance(value, Mapping):
        return {
            key: REDACTED if isinstance(key, str) and is_secret_key(key) else _clean(item, secrets, depth + 1)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple | set | frozenset):
        items = list(value)
        if len(items) == 2 and isinstance(items[0], str) and is_secret_key(items[0]):
            return [items[0], REDACTED]  # a (name, value) pair, e.g. one header
        return [_clean(item, secrets, depth + 1) for item in items]
    if secrets:
        text = str(value)
        masked = secrets.mask(text)
        if masked is not text:
            return masked
    return value


def redact(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    """The structlog processor: secret-looking keys and registered secret values become REDACTED."""
    secrets = _secrets
    for key, value in event_dict.items():
        if key not in _RESERVED and is_secret_key(key):
            event_dict[key] = REDACTED
        elif key != "exc_info":
            event_dict[key] = _clean(value, secrets, 0)
    return event_dict


# -- output ----------------------------------------------------------------------------------------------


class _Sink:
    """One stream, one lock: structlog's and stdlib's lines never interleave mid-line."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.lock = threading.Lock()

    def write(self, line: str) -> None:
        with self.lock:
            try:
                self.stream.write(line + "\n")
                self.stream.flush()
            except (OSError, ValueError):
                pass  # a closed or broken stream must not take the daemon down


class _Logger:
    """What structlog wraps: a name and a sink; every level method writes the rendered line."""

    def __init__(self, sink: _Sink, name: str | None) -> None:
        self.sink = sink
        self.name = name

    def msg(self, message: str) -> None:
        self.sink.write(message)

    log = debug = info = warn = warning = error = err = critical = fatal = exception = failure = msg


class _LoggerFactory:
    def __init__(self, sink: _Sink) -> None:
        self.sink = sink

    def __call__(self, *args: Any) -> _Logger:
        return _Logger(self.sink, args[0] if args and isinstance(args[0], str) else None)


def _add_logger_name(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    if "logger" not in event_dict:
        event_dict["logger"] = getattr(logger, "name", None) or "freshd"
    return event_dict


_FIRST_KEYS = ("timestamp", "level", "logger", "event", "connection", "job")


def _render_json(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> str:
    ordered = {key: event_dict.pop(key) for key in _FIRST_KEYS if key in event_dict}
    ordered.update(event_dict)
    return json.dumps(ordered, default=str, ensure_ascii=False)


class _StdlibBridge(logging.Handler):
    """Feeds stdlib records (hypercorn, psycopg, apscheduler) through freshd's processors."""

    def __init__(self, sink: _Sink, processors: Iterable[Processor], level: int) -> None:
        super().__init__(level)
        self.sink = sink
        self.processors = list(processors)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            method = record.levelname.lower()
            event: Any = {"event": record.getMessage(), "logger": record.name}
            if record.exc_info:
                event["exc_info"] = record.exc_info
            for processor in self.processors:
                event = processor(None, method, event)
            self.sink.write(event if isinstance(event, str) else str(event))
        except Exception:
            self.handleError(record)


# sd-daemon(3): "<N>" before a line written to a stream journald reads sets its priority
PRIORITIES = {"critical": 2, "exception": 3, "error": 3, "warning": 4, "warn": 4, "info": 6, "debug": 7}


def _with_priority(renderer: Processor) -> Processor:
    """`renderer`, with each output line prefixed by the event's syslog priority."""

    def render(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> str:
        priority = PRIORITIES.get(str(event_dict.get("level", method_name)).lower(), 6)
        text = str(renderer(logger, method_name, event_dict))
        return "\n".join(f"<{priority}>{line}" for line in text.split("\n"))

    return render


def _compact_progress(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    """On a console, ``job.progress`` is one short line: the per-entity table becomes totals."""
    if event_dict.get("event") == "job.progress":
        progress = event_dict.pop("progress", None)
        if isinstance(progress, Mapping):
            entities = [e for e in progress.values() if isinstance(e, Mapping)]
            event_dict["processed"] = sum(int(e.get("processed") or 0) for e in entities)
            failed = sum(int(e.get("failed") or 0) for e in entities)
            if failed:
                event_dict["failed"] = failed
    return event_dict


def is_journal_stream(stream: TextIO) -> bool:
    """Whether `stream` is the one systemd connected to the journal ($JOURNAL_STREAM = "dev:inode")."""
    value = os.environ.get("JOURNAL_STREAM", "")
    try:
        device, inode = (int(part) for part in value.split(":"))
        stat = os.fstat(stream.fileno())
    except (ValueError, OSError, AttributeError):  # unset, malformed, or not a real file (StringIO)
        return False
    return (stat.st_dev, stat.st_ino) == (device, inode)


def _is_tty(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def configure_logging(
    level: str = "info", fmt: str = "auto", stream: TextIO | None = None, *, journal: bool | None = None
) -> None:
    """Set up structlog and the stdlib bridge writing to `stream` (default: the current sys.stderr).

    `level` is one of debug, info, warning, error, critical; `fmt` one of auto, json, console.
    `journal` prefixes lines with their priority; None: when `stream` is $JOURNAL_STREAM.
    Calling it again replaces the previous set-up (tests do).
    """
    levelno = LEVELS.get(level.lower())
    if levelno is None:
        raise ValueError(f"unknown log level {level!r}; expected one of {', '.join(LEVELS)}")
    if fmt not in ("auto", "json", "console"):
        raise ValueError(f"unknown log format {fmt!r}; expected auto, json or console")
    out = sys.stderr if stream is None else stream
    sink = _Sink(out)
    use_json = fmt == "json" or (fmt == "auto" and not _is_tty(out))
    renderer: Processor = _render_json
    compact: list[Processor] = []
    if not use_json:
        renderer = structlog.dev.ConsoleRenderer(
            colors=_is_tty(out), exception_formatter=structlog.dev.plain_traceback
        )
        compact = [_compact_progress]
    if journal if journal is not None else is_journal_stream(out):
        renderer = _with_priority(renderer)
    tail: list[Processor] = [
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,  # before `redact`, so tracebacks are masked too
        redact,
        *compact,
        renderer,
    ]
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            _add_logger_name,
            structlog.processors.StackInfoRenderer(),
            *tail,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(levelno),
        logger_factory=_LoggerFactory(sink),
        context_class=dict,
        cache_logger_on_first_use=False,
    )

    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, _StdlibBridge):
            root.removeHandler(handler)
    bridge_level = max(logging.WARNING, levelno)
    root.addHandler(_StdlibBridge(sink, [structlog.processors.add_log_level, *tail], bridge_level))
    root.setLevel(bridge_level)
    logging.captureWarnings(True)

