"""Orion in the conformance suite (a partner app: password plus rotating refresh tokens)."""

from __future__ import annotations

from freshd.connectors.base import ConnectionSettings
from freshd.connectors.orion.simulator import OrionSimulator
from tests.rig import ConformanceCase

CREDS = {"username": "advisor@acme.example", "password": "s3cret-orion", "client_id": "4321",
         "client_secret": "6f1c2d3e-aaaa-bbbb-cccc-0123456789ab"}

CASE = ConformanceCase(
    provider="orion",
    make_simulator=lambda records, seed: OrionSimulator(records=records, seed=seed, credentials=CREDS,
                                                        history_days=5),
    settings=lambda url: ConnectionSettings("wealth", "orion", f"{url}/api", credentials=CREDS,
                                            options={"page_size": 100}),
    entities=("clients", "accounts", "aum_history"),
    uses_tokens=True,
    deletes="reconcile",  # clients are listed whole; accounts and AUM by the full listing
    records=120,
)
