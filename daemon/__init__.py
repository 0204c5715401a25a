"""freshd: keeps many third-party API connections synchronized into PostgreSQL.

Layout (one concern per module; see docs/ARCHITECTURE.md):
  app          the root nursery: start-up order and designed shutdown
  supervisor   one actor per connection, restarted with backoff
  actor        a connection's mailbox, state machine and policies
  sync         the sync engine: pages -> store, progress, checkpoints
  store        PostgreSQL (psycopg 3 via a bounded thread limiter), migrations
  admin        the admin socket protocol and server; ctl is its thin client
  scheduler    APScheduler on the trio loop; sweeps: what the periodic sweeps do
  queueing     the one funnel every job is queued through (sweeps and admin commands)
  metrics, logs, systemd, config, paths, errors, messages
Providers live in freshd.connectors (the connectors/ folder).
"""

__version__ = "0.1.0"
