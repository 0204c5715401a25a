"""Versioned SQL migrations, applied at start and by `freshd migrate`.

Files are ``migrations/NNNN_name.sql``, applied in order, each in its own
transaction together with its row in ``freshd.schema_migrations``.  An
advisory lock serialises daemons that start at the same time against one
database (the scale-out case), so a migration never runs twice.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

import psycopg

from freshd.errors import StoreUnavailable

SCHEMA = "freshd"
_LOCK_KEY = 0x66726573  # "fres": any constant shared by every freshd process
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


def available_migrations() -> list[Migration]:
    found = []
    for entry in resources.files("freshd.store").joinpath("migrations").iterdir():
        if match := _NAME.match(entry.name):
            found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"duplicate migration versions: {versions}")
    return found


def apply_migrations(url: str) -> list[Migration]:
    """Apply every pending migration; return the ones applied (blocking: run in a thread)."""
    try:
        conn = psycopg.connect(url, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        raise StoreUnavailable(f"cannot connect to the database: {exc}") from exc
    applied: list[Migration] = []
    with conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
        try:
            conn.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
            conn.execute(
                f"CREATE TABLE IF NOT EXISTS {SCHEMA}.schema_migrations ("
                " version int PRIMARY KEY, name text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            rows = conn.execute(f"SELECT version FROM {SCHEMA}.schema_migrations").fetchall()
            done = {row[0] for row in rows}
            for migration in available_migrations():
                if migration.version in done:
                    continue
                with conn.transaction():
                    conn.execute(f"SET LOCAL search_path = {SCHEMA}, public")
                    conn.execute(migration.sql.encode())
                    conn.execute(
                        f"INSERT INTO {SCHEMA}.schema_migrations (version, name) VALUES (%s, %s)",
                        (migration.version, migration.name),
                    )
                applied.append(migration)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))
    return applied
