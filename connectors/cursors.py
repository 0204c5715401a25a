"""Cursor values: the records' updated-at values as the listing engine compares, writes and sends them.

A cursor value is whatever the provider puts in the records: an ISO 8601 text (with or without
zone, fraction, T), epoch seconds or milliseconds (a number, or digits in a string), or an opaque
string.  They are compared by what they mean (numbers, then dates, then other text), never as
text, so checkpoints written in another form still compare right.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from freshd.connectors.schema import dig
from freshd.connectors.streams import Incremental
from freshd.errors import PermanentError


def cursor_value(record: Any, path: str) -> Any:
    try:
        return dig(record, path)
    except KeyError:
        return None


def _number(value: Any) -> float | None:
    """A numeric cursor (a number, or a string of digits), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str) and value.strip().lstrip("-").replace(".", "", 1).isdigit():
        return float(value)
    return None


def moment(value: Any) -> datetime | None:
    """A cursor value as an aware datetime: ISO 8601 (naive = UTC) or epoch seconds/milliseconds."""
    number = _number(value)
    if number is not None:
        seconds = number / 1000 if abs(number) > 1e11 else number  # beyond year 5138 in seconds: milliseconds
        try:
            return datetime.fromtimestamp(seconds, UTC)
        except (OverflowError, OSError, ValueError):
            return None
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            return None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return None


def _order(value: Any) -> tuple[int, Any] | None:
    """A sort key for cursor values: numbers, then dates, then other strings; None: not a cursor."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return (0, float(value))
    if isinstance(value, str):
        parsed = moment(value)
        return (1, parsed.timestamp()) if parsed is not None else (2, value)
    return None


def later(a: Any, b: Any) -> Any:
    """The higher of two cursor values (either may be None: then the other)."""
    return _pick(a, b, higher=True)


def earlier(a: Any, b: Any) -> Any:
    """The lower of two cursor values (either may be None: then the other)."""
    return _pick(a, b, higher=False)


def _pick(a: Any, b: Any, *, higher: bool) -> Any:
    ka, kb = _order(a), _order(b)
    if kb is None:
        return a
    if ka is None:
        return b
    return b if (kb > ka if higher else kb < ka) else a


def _like(original: str, when: datetime) -> str:
    """`when` written the way the ISO 8601 `original` was (Z, offset or naive; fraction or not; T or space)."""
    text = original.strip()
    sep = " " if " " in text else "T"
    spec = "microseconds" if "." in text.rsplit(sep, maxsplit=1)[-1] else "seconds"
    written = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    if text.endswith(("Z", "z")):
        return when.astimezone(UTC).replace(tzinfo=None).isoformat(sep, spec) + "Z"
    if written.tzinfo is not None:
        return when.astimezone(written.tzinfo).isoformat(sep, spec)
    return when.astimezone(UTC).replace(tzinfo=None).isoformat(sep, spec)


def iso(when: datetime) -> str:
    """`when` in UTC as ISO 8601 to the second with a `Z` (the generic REST API's and SP-API's dates)."""
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def format_cursor(value: Any, fmt: str, lookback: float) -> str:
    """The checkpointed cursor as the filter parameter sends it: `fmt` is raw (as the records have
    it), iso8601 (UTC, Z), epoch, epoch_ms or a strftime pattern (UTC); minus `lookback` seconds
    (a numeric cursor sent raw: minus `lookback` in its own units)."""
    if fmt == "raw" and not lookback:
        return "true" if value is True else "false" if value is False else str(value)
    if fmt == "raw" and (number := _number(value)) is not None:
        shifted = number - lookback
        return str(int(shifted)) if shifted.is_integer() else str(shifted)
    when = moment(value)
    if when is None:
        raise PermanentError(f"cursor value {value!r} is not a date or an epoch time: cannot apply "
                             f"incremental_format {fmt!r} / lookback")
    when -= timedelta(seconds=lookback)
    match fmt:
        case "raw":
            return _like(str(value), when)
        case "iso8601":
            return iso(when)
        case "epoch":
            return str(int(when.timestamp()))
        case "epoch_ms":
            return str(int(when.timestamp() * 1000))
    return when.astimezone(UTC).strftime(fmt)


def stamp(when: datetime, incremental: Incremental | None, sample: Any) -> Any:
    """A clock reading written as a cursor value, like `sample` (a value the records carry) when
    there is one, else as the declared format writes it (ISO 8601 UTC by default)."""
    fmt = incremental.format if incremental is not None else "raw"
    if "%" in fmt:
        return when.astimezone(UTC).strftime(fmt)
    if isinstance(sample, str) and moment(sample) is not None and _number(sample) is None:
        return _like(sample, when)
    if (isinstance(sample, int | float) and not isinstance(sample, bool)) or fmt in ("epoch", "epoch_ms"):
        return int(when.timestamp() * (1000 if fmt == "epoch_ms" or (_number(sample) or 0) > 1e11 else 1))
    return iso(when)


def due(stamp: Any, interval: float) -> bool:
    """Whether a periodic run (a full listing, an id diff, a reconciliation) is due: it never ran
    (`stamp` None or unreadable), or `interval` seconds have passed since `stamp`."""
    when = moment(stamp)
    return when is None or (datetime.now(UTC) - when).total_seconds() >= interval
