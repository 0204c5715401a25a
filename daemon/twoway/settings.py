"""Two-way sync's configuration ([twoway] and [pairs.NAME]): plain records, no behaviour, so the
config module can hold them without importing the engine."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

MAX_BATCH_SIZE = 200
MAX_WRITE_RATE = 50.0  # requests per minute per tenant: the contract's ceiling


@dataclass(frozen=True, slots=True)
class TwoWaySettings:
    """[twoway] in the config."""

    batch_size: int = 50
    batch_delay: float = 0.0  # seconds between batches
    write_rate_per_minute: float = 10.0  # per tenant, at most MAX_WRITE_RATE
    max_runs_per_tenant: int = 5
    attempts: int = 3  # per item
    backoff: float = 1.0  # seconds before the second attempt, doubling ...
    backoff_cap: float = 16.0  # ... up to this



@dataclass(frozen=True, slots=True)
class PairConfig:
    """[pairs.NAME]: two connections (by name) and the pair's declaration {"entities": {name: overrides}}."""

    name: str
    left: str
    right: str
    spec: dict[str, Any] = field(default_factory=dict)
