"""Powens in the conformance suite (tests/test_powens.py covers connection states and tokens)."""

from __future__ import annotations

from freshd.connectors.base import ConnectionSettings
from freshd.connectors.powens.simulator import PowensSimulator
from tests.rig import ConformanceCase

CREDS = {"access_token": "powens-conformance-token"}

CASE = ConformanceCase(
    provider="powens",
    make_simulator=lambda records, seed: PowensSimulator(records=records, seed=seed, credentials=CREDS),
    settings=lambda url: ConnectionSettings("bank", "powens", f"{url}/2.0", credentials=CREDS,
                                            options={"page_size": 100}),
    entities=("transactions", "accounts", "connections"),
    deletes="tombstone",  # deleted transactions come back with `deleted` set
)
