"""The limits freshd's sync is measured against, in the same run (bench/sync_woocommerce.py).

* fetch: the same client stack as the daemon (the WooCommerce connector: httpx on trio, OAuth 1.0a
  signing, orjson, `page_concurrency` pages in flight), every page dropped: nothing encoded or stored;
  with a latency (`set_latency`), the simulator adds it to every response.
* bulk upsert: the same records (canonical JSON and content hash computed beforehand, untimed),
  COPY into a temporary table and one `INSERT … ON CONFLICT` into freshd's own `records` table,
  one transaction: what PostgreSQL absorbs at best.
* per-page upsert: the same, 100 rows and a commit per page (what a naive one-page-per-transaction
  writer could reach at best).

Each limit runs in a fresh database migrated to freshd's schema, nothing else running.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

import orjson
import psycopg
import trio

UPSERT = """
INSERT INTO freshd.records AS r (connection_id, entity, external_id, payload, content_hash)
SELECT %s, 'customers', t.eid, t.payload, t.h FROM bench_in t
ON CONFLICT (connection_id, entity, external_id) DO UPDATE
    SET payload = excluded.payload, content_hash = excluded.content_hash, last_seen_at = now(),
        version = r.version + 1, changed_at = now()
    WHERE r.content_hash <> excluded.content_hash
"""


def customers(count: int, seed: int = 1) -> list[dict[str, Any]]:
    """The simulator's own records (same seed as the benchmark's simulator)."""
    from freshd.connectors.woocommerce.simulator import WooCommerceSimulator

    sim = WooCommerceSimulator(records=0, seed=seed, customers=count, orders=0, products=0)
    return [sim.collections["customers"].get(rid) for rid in range(1, count + 1)]


def _copy_text(records: list[dict[str, Any]]) -> bytes:
    """COPY text rows: id, canonical JSON, content hash (as freshd encodes them)."""
    lines = []
    for record in records:
        data = orjson.dumps(record, option=orjson.OPT_SORT_KEYS)
        digest = hashlib.blake2b(data, digest_size=16).hexdigest()
        lines.append(b"%d\t%s\t\\\\x%s\n" % (record["id"], data.replace(b"\\", b"\\\\"), digest.encode()))
    return b"".join(lines)


def _prepare(db: str) -> int:
    from freshd.store import migrate

    migrate.apply_migrations(db)
    with psycopg.connect(db) as conn:
        row = conn.execute("INSERT INTO freshd.connections (name, provider, base_url, source)"
                           " VALUES ('limit', 'woocommerce', 'http://x', 'admin') RETURNING id").fetchone()
        assert row is not None
        return int(row[0])


def _upsert(conn: psycopg.Connection[Any], cid: int, data: bytes) -> None:
    conn.execute("CREATE TEMP TABLE IF NOT EXISTS bench_in (eid text, payload jsonb, h bytea)"
                 " ON COMMIT DELETE ROWS")
    with conn.cursor().copy("COPY bench_in (eid, payload, h) FROM STDIN") as copy:
        copy.write(data)
    conn.execute(UPSERT, (cid,))


def bulk_upsert(db: str, records: list[dict[str, Any]]) -> float:
    """Seconds to upsert every record in one transaction."""
    cid = _prepare(db)
    data = _copy_text(records)
    with psycopg.connect(db) as conn:
        started = time.perf_counter()
        with conn.transaction():
            _upsert(conn, cid, data)
        return time.perf_counter() - started


def per_page_upsert(db: str, records: list[dict[str, Any]], page: int = 100) -> float:
    """Seconds to upsert every record, `page` rows and a commit at a time."""
    cid = _prepare(db)
    pages = [_copy_text(records[i:i + page]) for i in range(0, len(records), page)]
    with psycopg.connect(db) as conn:
        started = time.perf_counter()
        for data in pages:
            with conn.transaction():
                _upsert(conn, cid, data)
        return time.perf_counter() - started


def set_latency(base_url: str, seconds: float) -> None:
    """The simulator adds `seconds` to every provider response from now on (its latency fault),
    for whoever fetches: the fetch limit and the daemon alike."""
    import httpx

    httpx.post(f"{base_url}/_sim/faults", json={"latency": seconds}, timeout=10).raise_for_status()


def fetch(base_url: str, credentials: dict[str, str], concurrency: int = 4,
          latency: float | None = None) -> tuple[float, int]:
    """Seconds to list every customer through the daemon's own connector, and the records seen
    (`latency`: set the simulator's per-response delay first)."""
    if latency is not None:
        set_latency(base_url, latency)
    from freshd.connectors.base import ConnectionSettings, SyncMode, connector_class

    settings = ConnectionSettings(name="limit", provider="woocommerce", base_url=base_url,
                                  credentials=credentials, options={"page_concurrency": concurrency})
    seen = 0

    class Drop:
        async def emit(self, page: Any) -> None:
            nonlocal seen
            seen += len(page.records)

        async def known_versions(self, entity: str, field_name: str) -> dict[str, str]:
            return {}

        def set_total(self, entity: str, total: int | None, *, estimated: bool = False) -> None:
            pass

    async def run() -> float:
        connector = connector_class("woocommerce")(settings)
        try:
            started = time.perf_counter()
            await connector.sync_entity(connector.stream("customers"), None, SyncMode.FULL, Drop())
            return time.perf_counter() - started
        finally:
            await connector.aclose()

    cpu = time.process_time()
    elapsed = trio.run(run)
    fetch.cpu_seconds = time.process_time() - cpu  # type: ignore[attr-defined]  # the client's CPU, for comparison
    return elapsed, seen
