"""Reading the parsed TOML: typed values, every problem collected, and where each key is in the file.

`Reader` reads one table (strings, booleans, integers, durations, sub-tables, choices); a bad value
raises ConfigError, which `Reader.collect` records so that every problem of the file is reported at
once, and unknown keys are errors with a "did you mean" suggestion.  `read_section` reads a table into
its dataclass: the keys are the fields, the types and defaults theirs.  `Where` turns a key path
(``connections[2].base_url``) into ``file:line: key`` from a best-effort scan of the text, and
`parse_duration` reads ``"90s"``, ``"1h30m"`` or plain seconds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import re
import typing
from collections.abc import Callable, Collection, Mapping
from datetime import date, datetime, time
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from freshd.errors import ConfigError, ConfigErrors, collecting

# -- parsing helpers -----------------------------------------------------------------------------------

_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_DURATION = re.compile(rf"(?:{_DURATION_PART.pattern})+")


def parse_duration(value: object) -> float:
    """``"90s"``, ``"15m"``, ``"1h30m"``, ``"1d"``, or an integer of seconds -> float seconds.

    Raises ValueError (negative, empty, unknown unit, wrong type).
    """
    if isinstance(value, bool):
        raise ValueError(f"expected a duration like \"90s\" or \"2h\", got {describe(value)}")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"a duration cannot be negative, got {value!r}")
        return float(value)
    if not isinstance(value, str):
        raise ValueError(f"expected a duration like \"90s\" or \"2h\", got {describe(value)}")
    text = value.strip().lower()
    if text.isdigit():
        return float(text)
    if not _DURATION.fullmatch(text):
        raise ValueError(
            f"bad duration {value!r}: use a number with a unit (ms, s, m, h, d, w), e.g. \"90s\", \"1h30m\""
        )
    return sum(float(number) * _DURATION_UNITS[unit] for number, unit in _DURATION_PART.findall(text))


def describe(value: object, *, show: bool = True) -> str:
    kind = {
        bool: "a boolean", int: "an integer", float: "a float", str: "a string",
        dict: "a table", list: "an array",
    }.get(type(value))
    if kind is None:
        kind = "a date/time" if isinstance(value, datetime | date | time) else type(value).__name__
    if not show:
        return kind
    text = repr(value)
    return f"{kind} ({text if len(text) <= 40 else text[:37] + '...'})"


def suggest(key: str, known: Collection[str]) -> str:
    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
    if close:
        return f"did you mean {close[0]!r}?"
    return "expected one of: " + ", ".join(sorted(known))


# -- where keys are in the text ------------------------------------------------------------------------

_BARE = r"[A-Za-z0-9_-]+"
_QUOTED = r"\"(?:[^\"\\]|\\.)*\"|'[^']*'"
_KEY = rf"(?:{_BARE}|{_QUOTED})"
_DOTTED = rf"{_KEY}(?:\s*\.\s*{_KEY})*"
_ARRAY_HEADER = re.compile(rf"^\s*\[\[\s*({_DOTTED})\s*\]\]")
_TABLE_HEADER = re.compile(rf"^\s*\[\s*({_DOTTED})\s*\]")
_ASSIGNMENT = re.compile(rf"^\s*({_DOTTED})\s*=")
_INLINE_PAIR = re.compile(rf"[{{,]\s*({_KEY})\s*=")


def _split_dotted(text: str) -> list[str]:
    return [part.strip('"').strip("'") for part in re.findall(_KEY, text)]


def _key_lines(text: str) -> dict[str, int]:
    """Best effort: key path (``admin.socket``, ``connections[1].credentials.x``) -> line number.

    A scan of the lines, not a parser: table headers, arrays of tables (counted), ``key =``
    lines and one level of inline tables.  Lines inside multi-line strings are skipped.
    """
    lines: dict[str, int] = {}
    array_counts: dict[str, int] = {}
    table: list[str] = []
    in_string: str | None = None

    def resolve(parts: list[str]) -> str:
        # `[connections.options]` after `[[connections]]` is the latest connection's table
        path = ""
        for part in parts:
            path = f"{path}.{part}" if path else part
            if path in array_counts:
                path = f"{path}[{array_counts[path] - 1}]"
        return path

    for number, line in enumerate(text.splitlines(), start=1):
        if in_string is not None:
            if line.count(in_string) % 2 == 1:
                in_string = None
            continue
        if match := _ARRAY_HEADER.match(line):
            parts = _split_dotted(match.group(1))
            parent = resolve(parts[:-1])
            raw = f"{parent}.{parts[-1]}" if parent else parts[-1]
            array_counts[raw] = array_counts.get(raw, 0) + 1
            table = [f"{raw}[{array_counts[raw] - 1}]"]
            lines.setdefault(table[0], number)
            lines.setdefault(raw, number)
        elif match := _TABLE_HEADER.match(line):
            table = [resolve(_split_dotted(match.group(1)))]
            lines.setdefault(table[0], number)
        elif match := _ASSIGNMENT.match(line):
            path = ".".join([*table, *_split_dotted(match.group(1))])
            lines.setdefault(path, number)
            rest = line[match.end():]
            for inner in _INLINE_PAIR.finditer(rest):
                lines.setdefault(f"{path}.{_split_dotted(inner.group(1))[0]}", number)
            for quote in ('"""', "'''"):
                if rest.count(quote) % 2 == 1:
                    in_string = quote
    return lines


class Where:
    """Turns a key path into ``file:line: key`` for error messages."""

    def __init__(self, source: Path | None, text: str) -> None:
        self.source = source
        self.lines = _key_lines(text) if text else {}

    def __call__(self, key: str) -> str:
        probe = key
        while probe:
            if (line := self.lines.get(probe)) is not None:
                return f"{self.source}:{line}: {key}" if self.source else f"line {line}: {key}"
            probe = re.sub(r"(\.[^.\[]+|\[\d+\])$", "", probe) if re.search(r"[.\[]", probe) else ""
        return f"{self.source}: {key}" if self.source else key


class Reader:
    """Reads one table; unknown keys are errors.  A bad value raises ConfigError (`fail`); the
    section readers catch it with `collect`, so every problem of the file is reported at once."""

    def __init__(self, data: Mapping[str, Any], prefix: str, where: Where,
                 errors: list[ConfigError] | None = None) -> None:
        self.data = data
        self.prefix = prefix
        self.where = where
        self.errors: list[ConfigError] = [] if errors is None else errors  # shared by the whole file

    def collect(self) -> contextlib.AbstractContextManager[None]:
        """Record a ConfigError (or each of ConfigErrors) raised inside, and go on."""
        return collecting(self.errors)

    def child(self, data: Mapping[str, Any], prefix: str) -> Reader:
        return Reader(data, prefix, self.where, self.errors)

    def path(self, key: str) -> str:
        return f"{self.prefix}.{key}" if self.prefix else key

    def fail(self, key: str, message: str) -> NoReturn:
        raise ConfigError(message, where=self.where(self.path(key)))

    def check_keys(self, known: Collection[str], *, stop: bool = False) -> None:
        """Every unknown key recorded; `stop`: raised at once instead (the table is not read further)."""
        unknown = [ConfigError(f"unknown key {key!r}; {suggest(key, known)}", where=self.where(self.path(key)))
                   for key in self.data if key not in known]
        if stop and unknown:
            raise unknown[0] if len(unknown) == 1 else ConfigErrors(unknown)
        self.errors.extend(unknown)

    def has(self, key: str) -> bool:
        return key in self.data

    def _typed(self, key: str, kind: type | tuple[type, ...], name: str, default: Any) -> Any:
        if key not in self.data:
            return default
        value = self.data[key]
        if isinstance(value, bool) and kind is not bool:
            self.fail(key, f"expected {name}, got {describe(value)}")
        if not isinstance(value, kind):
            self.fail(key, f"expected {name}, got {describe(value)}")
        return value

    def string(self, key: str, default: str | None, *, empty: bool = False) -> Any:
        value = self._typed(key, str, "a string", default)
        if isinstance(value, str) and not value and not empty and key in self.data:
            self.fail(key, "must not be empty")
        return value

    def boolean(self, key: str, default: bool) -> bool:
        return bool(self._typed(key, bool, "a boolean (true or false)", default))

    def integer(self, key: str, default: int, *, minimum: int) -> int:
        value: int = self._typed(key, int, "an integer", default)
        if value < minimum:
            self.fail(key, f"must be at least {minimum}, got {value}")
        return value

    def duration(self, key: str, default: float, *, positive: bool = True) -> float:
        if key not in self.data:
            return default
        try:
            seconds = parse_duration(self.data[key])
        except ValueError as exc:
            self.fail(key, str(exc))
        if positive and seconds <= 0:
            self.fail(key, f"must be longer than zero, got {self.data[key]!r}")
        return seconds

    def table(self, key: str) -> Reader:
        value: Mapping[str, Any] = {}
        with self.collect():  # not a table: recorded, and read as an empty one
            value = self._typed(key, dict, "a table", {})
        return self.child(value, self.path(key))

    def choice(self, key: str, default: str, choices: Collection[str]) -> str:
        value: str = self.string(key, default)
        normalized = value.strip().lower()
        if normalized not in choices:
            self.fail(key, f"unknown value {value!r}; {suggest(normalized, choices)}")
        return normalized



def string_list(reader: Reader, key: str, default: tuple[str, ...] = ()) -> tuple[str, ...]:
    value = reader._typed(key, list, "a list of strings", default)
    if not all(isinstance(item, str) and item for item in value):
        reader.fail(key, "expected a list of non-empty strings")
    return tuple(value)



# -- sections, read from their dataclasses ---------------------------------------------------------------

_S = TypeVar("_S")
Read = Callable[[Reader, str, Any], Any]  # (table, key, the field's default) -> value; raises ConfigError


def field_names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


def _default(f: dataclasses.Field[Any]) -> Any:
    """The field's default (None for a required field: its reader says it is missing)."""
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def read_section(
    table: Reader, cls: type[_S], *, read: Mapping[str, Read] | None = None, given: Mapping[str, Any] | None = None,
    minimum: Mapping[str, int] | None = None, zero_ok: Collection[str] = (),
) -> _S:
    """A [table] read into `cls`: one key per field, of the field's name, read by the field's type
    (bool, int, float = a duration, str, str | None) with the field's default; `read` reads a field
    another way, `given` fields the caller has read.  Integers are at least 1 unless `minimum`
    says otherwise; durations are longer than zero unless in `zero_ok`.  A bad value is recorded
    (every one is reported) and its default used: the caller checks `table.errors` before relying
    on the values together."""
    read, given, minimum = read or {}, given or {}, minimum or {}
    table.check_keys(field_names(cls))
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(typing.cast(Any, cls)):
        if f.name in given:
            continue
        default, kind = _default(f), hints[f.name]
        with table.collect():
            if f.name in read:
                values[f.name] = read[f.name](table, f.name, default)
            elif kind is bool:
                values[f.name] = table.boolean(f.name, default)
            elif kind is int:
                values[f.name] = table.integer(f.name, default, minimum=minimum.get(f.name, 1))
            elif kind is float:
                values[f.name] = table.duration(f.name, default, positive=f.name not in zero_ok)
            elif kind in (str, str | None):
                values[f.name] = table.string(f.name, default)
            else:
                raise TypeError(f"{cls.__name__}.{f.name}: no reader for {kind}; pass read= or given=")
        values.setdefault(f.name, default)
    return cls(**values, **given)

