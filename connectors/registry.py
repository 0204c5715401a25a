"""The providers: every sub-package of `freshd.connectors` that exports a `PROVIDER`.

Adding a provider is adding one folder::

    connectors/acme/__init__.py     PROVIDER = Provider("acme", connector="freshd.connectors.acme.connector:Acme",
                                                        simulator="freshd.connectors.acme.simulator:AcmeSimulator",
                                                        doc="docs/connectors/acme.md")
    connectors/acme/connector.py    the Connector subclass (freshd.connectors.base)
    connectors/acme/simulator.py    the simulator (the Simulator protocol, freshd.connectors.simulator)

plus its tests and its doc.  Nothing else names it: `freshd.connectors.base.connector_class`,
`providers()`, `simulator_class()` and `freshd simulate` all read this registry.

The registry is found by scanning the package's path for sub-packages (pkgutil), once per path.
Only the packages' `__init__` modules are imported to read it, and those must stay light: a
connector or simulator module is imported when its class is first asked for, so the daemon loads
only the providers it runs.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from freshd import connectors as _package
from freshd.errors import ConfigError

if TYPE_CHECKING:
    from freshd.connectors.simulator import Simulator

# a class to load on first use: "module:Class", or a function returning it
Target = str | Callable[[], type[object]]


@dataclass(frozen=True, slots=True)
class Provider:
    """What a provider package declares (its `PROVIDER`)."""

    name: str  # as connections and config name it (`provider = "acme"`)
    connector: Target  # the freshd.connectors.base.Connector subclass
    simulator: Target  # a class following freshd.connectors.simulator.Simulator
    doc: str  # its user documentation, relative to the repository root (docs/connectors/NAME.md)

    def __post_init__(self) -> None:
        for key in ("connector", "simulator"):
            target = getattr(self, key)
            if isinstance(target, str) and not all(target.partition(":")[::2]):
                raise ValueError(f"provider {self.name!r}: {key} must be 'module:Class', got {target!r}")


def load(target: Target) -> type[object]:
    """The class a target names, imported now."""
    if not isinstance(target, str):
        return target()
    module, _, name = target.partition(":")
    cls: type[object] = getattr(importlib.import_module(module), name)
    return cls


@functools.cache
def _discover(path: tuple[str, ...]) -> dict[str, Provider]:
    found: dict[str, Provider] = {}
    for info in sorted(pkgutil.iter_modules(list(path)), key=lambda info: info.name):
        if not info.ispkg:
            continue
        module = importlib.import_module(f"{_package.__name__}.{info.name}")
        provider = getattr(module, "PROVIDER", None)
        if not isinstance(provider, Provider):
            continue
        if provider.name in found:
            raise RuntimeError(f"two packages declare provider {provider.name!r}: "
                               f"{found[provider.name].connector!r} and {provider.connector!r}")
        found[provider.name] = provider
    return found


def registered() -> dict[str, Provider]:
    """Provider name -> its declaration (found on first use; again only if the package's path changes)."""
    return _discover(tuple(_package.__path__))


def providers() -> tuple[str, ...]:
    return tuple(sorted(registered()))


def provider(name: str) -> Provider:
    """The declaration of `name`; an unknown name is a ConfigError listing the valid ones."""
    try:
        return registered()[name]
    except KeyError:
        raise ConfigError(f"unknown provider {name!r}; valid providers: {', '.join(providers())}") from None


def simulator_class(name: str) -> type[Simulator]:
    """The simulator class of provider `name` (imported on first use)."""
    return cast("type[Simulator]", load(provider(name).simulator))
