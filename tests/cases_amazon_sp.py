"""Amazon SP-API in the conformance suite."""

from __future__ import annotations

from freshd.connectors.amazon_sp.simulator import AmazonSPSimulator
from freshd.connectors.base import ConnectionSettings
from tests.rig import ConformanceCase

CREDS = {"refresh_token": "Atzr|conformance", "client_id": "amzn1.application-oa2-client.conformance",
         "client_secret": "amzn1.oa2-cs.v1.conformance"}
OPTIONS = {
    "marketplace_ids": ["ATVPDKIKX0DER"],
    "token_url": "/auth/o2/token",  # the simulator serves LWA next to the SP-API
    "report_poll_interval": 0.05,
}

CASE = ConformanceCase(
    provider="amazon_sp",
    make_simulator=lambda records, seed: AmazonSPSimulator(records=records, seed=seed, credentials=CREDS),
    settings=lambda url: ConnectionSettings("amazon", "amazon_sp", url, credentials=CREDS, options=OPTIONS),
    # mutate/corrupt act on inventory; SKUs removed from inventory leave no trace: a full listing reconciles
    entities=("inventory_summaries", "financial_events", "reimbursements"),
    uses_tokens=True,
    deletes="reconcile",
    options=OPTIONS,
)
