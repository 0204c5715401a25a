"""PostgreSQL store: `open_store` / `Store.call` (db), migrations (migrate), typed views (views), and the SQL
by concern: connections, records (pages + cursors), deletions (inferred from a listing, checked first),
jobs, activity, stats (daily figures)."""

from freshd.store.db import Connection, Store, open_store

__all__ = ["Connection", "Store", "open_store"]
