"""One schema engine for options and config: frozen dataclasses are their own schema.

`build` reads a table field by field from a dataclass's type hints, refuses
unknown keys (listing the valid ones), and turns a problem into ConfigError
whose `where` names the option (``options.streams[1].paginator``), so config
load and ``connections add`` reject bad input before anything is stored.  A
tagged union (a `Registry`) is written either as its kind alone
(``paginator = "link_header"``) or as a table with ``kind`` and the kind's own
keys.  Cross-field rules live in each class's ``__post_init__`` (raise `Invalid`).

Providers declare their options as one such dataclass (`Connector.options_type`);
the generic REST connector's whole configuration is one too.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, Generic, TypeVar, Union, get_args, get_origin, get_type_hints

from freshd.errors import ConfigError, ConfigErrors

Scalar = str | int | float | bool
T = TypeVar("T")


class Invalid(Exception):
    """Raised by a config class's __post_init__: `key` (None: the table itself) and why; `more`:
    other keys' problems found by the same check (`rules` raises them together)."""

    def __init__(self, key: str | None, message: str, more: Sequence[tuple[str | None, str]] = ()) -> None:
        self.key = key
        self.message = message
        self.more = tuple(more)
        super().__init__(message)


def rules(*checks: tuple[str | None, bool, str]) -> None:
    """A __post_init__'s cross-field and range rules, (key, holds, why): every broken one raised at once."""
    broken = [(key, why) for key, holds, why in checks if not holds]
    if broken:
        raise Invalid(*broken[0], more=broken[1:])


class Registry(Generic[T]):
    """Kind name -> config class: one tagged union (auth kinds, paginator kinds)."""

    def __init__(self, what: str, kinds: Mapping[str, type[T]]) -> None:
        self.what = what
        self.kinds = dict(kinds)

    def names(self) -> str:
        return ", ".join(sorted(self.kinds))

    def build(self, raw: Any, where: str) -> T:
        if isinstance(raw, str):
            kind, table = raw, {}
        elif isinstance(raw, Mapping):
            if "kind" not in raw:
                raise ConfigError(f"missing 'kind'; valid {self.what} kinds: {self.names()}", where=where)
            kind, table = raw["kind"], {k: v for k, v in raw.items() if k != "kind"}
        else:
            raise ConfigError(f"expected a {self.what} kind (one of: {self.names()}) or a table with 'kind', "
                              f"got {_describe(raw)}", where=where)
        cls = self.kinds.get(kind) if isinstance(kind, str) else None
        if cls is None:
            raise ConfigError(f"unknown {self.what} kind {kind!r}; valid kinds: {self.names()}", where=where)
        return build(cls, table, where)


def _describe(value: Any) -> str:
    kind = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}.get(type(value))
    if kind is None:
        kind = "a table" if isinstance(value, Mapping) else "an array" if isinstance(value, Sequence) \
            else type(value).__name__
    return kind


def _coerce(value: Any, hint: Any, where: str, registry: Registry[Any] | None) -> Any:
    """`value` as the type `hint` describes, or ConfigError at `where`."""
    if registry is not None:
        return registry.build(value, where)
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        members = get_args(hint)
        if value is None and type(None) in members:
            return None
        real = [m for m in members if m is not type(None)]
        if len(real) == 1:
            return _coerce(value, real[0], where, None)
        for member in real:  # a union of scalars: the first that fits as is
            if member in (str, int, float, bool) and _fits(value, member):
                return value
        arrays = [m for m in real if get_origin(m) is tuple]  # or an array ("a list, or a comma-separated string")
        if arrays and isinstance(value, Sequence) and not isinstance(value, str | bytes):
            return _coerce(value, arrays[0], where, None)
        names = " or ".join(_type_name(m) for m in real)
        raise ConfigError(f"expected {names}, got {_describe(value)}", where=where)
    if origin is tuple:
        item = get_args(hint)[0]
        if isinstance(value, str | bytes) or not isinstance(value, Sequence):
            raise ConfigError(f"expected an array, got {_describe(value)}", where=where)
        return tuple(_every([(f"{where}[{i}]", v) for i, v in enumerate(value)], item))
    if origin is not None and origin in (Mapping, dict, typing.Mapping):
        item = get_args(hint)[1]
        if not isinstance(value, Mapping):
            raise ConfigError(f"expected a table, got {_describe(value)}", where=where)
        values = _every([(f"{where}.{k}", v) for k, v in value.items()], item)
        return types.MappingProxyType(dict(zip((str(k) for k in value), values, strict=True)))
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        if not isinstance(value, Mapping):
            raise ConfigError(f"expected a table, got {_describe(value)}", where=where)
        return build(hint, value, where)
    if hint in (str, int, float, bool):
        if not _fits(value, hint):
            raise ConfigError(f"expected {_type_name(hint)}, got {_describe(value)}", where=where)
        return float(value) if hint is float else value
    raise TypeError(f"no schema for {hint!r}")  # a programming error, not a config one


def _every(items: list[tuple[str, Any]], hint: Any) -> list[Any]:
    """Each (where, value) as `hint`: every item's problems reported together."""
    found: list[Any] = []
    problems: list[ConfigError] = []
    for where, value in items:
        try:
            found.append(_coerce(value, hint, where, None))
        except ConfigErrors as exc:
            problems.extend(exc.errors)
        except ConfigError as exc:
            problems.append(exc)
    if problems:
        raise problems[0] if len(problems) == 1 else ConfigErrors(problems)
    return found


def _fits(value: Any, hint: Any) -> bool:
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    return isinstance(value, hint)


def _type_name(hint: Any) -> str:
    if get_origin(hint) is tuple:
        return "an array"
    return {str: "a string", int: "an integer", float: "a number", bool: "a boolean"}.get(hint, str(hint))


def build(cls: type[T], raw: Mapping[str, Any], where: str, *, extra: frozenset[str] = frozenset()) -> T:
    """A config dataclass from a table: unknown keys refused with the valid ones, required keys checked.

    Every problem is reported at once (ConfigErrors when there are several, each naming its key);
    the class's own cross-field rules run once its fields are sound.  `extra`: keys someone else
    reads (allowed, ignored here).
    """
    assert dataclasses.is_dataclass(cls)
    hints = get_type_hints(cls)
    known = [f for f in dataclasses.fields(cls) if f.init]
    names = {f.name for f in known}
    problems: list[ConfigError] = []
    for key in raw:
        if key not in names and key not in extra:
            valid = ", ".join(sorted(names | extra)) or "(none)"
            problems.append(ConfigError(f"unknown key {key!r}; valid keys: {valid}", where=f"{where}.{key}"))
    kwargs: dict[str, Any] = {}
    for f in known:
        if f.name in raw:
            try:
                kwargs[f.name] = _coerce(raw[f.name], hints[f.name], f"{where}.{f.name}", f.metadata.get("registry"))
            except ConfigErrors as exc:
                problems.extend(exc.errors)
            except ConfigError as exc:
                problems.append(exc)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            problems.append(ConfigError(f"missing required key {f.name!r}", where=f"{where}.{f.name}"))
    if not problems:
        try:
            return cls(**kwargs)
        except Invalid as exc:
            problems.extend(ConfigError(message, where=f"{where}.{key}" if key else where)
                            for key, message in ((exc.key, exc.message), *exc.more))
    raise problems[0] if len(problems) == 1 else ConfigErrors(problems)


def dig(data: Any, path: str) -> Any:
    """The value at a dotted path (``data.items``, ``links.0.href``); KeyError if it is not there."""
    for part in path.split("."):
        if isinstance(data, Mapping):
            data = data[part]
        elif isinstance(data, list) and part.lstrip("-").isdigit():
            try:
                data = data[int(part)]
            except IndexError:
                raise KeyError(path) from None
        else:
            raise KeyError(path)
    return data


def check_dotted(key: str, value: str | None) -> None:
    if value is not None and (not value or any(not part for part in value.split("."))):
        raise Invalid(key, f"{value!r} is not a dotted path (e.g. \"data.items\")")


def check_unique(key: str, what: str, names: Sequence[str]) -> None:
    """Each of an array's tables names itself once: the first repeat is refused, naming both places."""
    seen: dict[str, int] = {}
    for index, name in enumerate(names):
        if name in seen:
            raise Invalid(f"{key}[{index}].name", f"duplicate {what} name {name!r} (also {key}[{seen[name]}])")
        seen[name] = index


def check_header(key: str, value: str | None) -> None:
    if value is not None and not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", value):
        raise Invalid(key, f"{value!r} is not an HTTP header name")
