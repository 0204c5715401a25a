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


def _import_structlog_without_rich() -> None:
    """structlog imports rich, when installed, for pretty tracebacks the daemon never renders
    (logs use plain ones): about 180 ms of every start and 4 MB of every daemon.  Imported first
    with rich hidden, structlog takes it as absent; rich is then importable as usual (freshctl
    draws with it)."""
    import sys

    if "structlog" in sys.modules or "rich" in sys.modules:
        return
    sys.modules["rich"] = None  # type: ignore[assignment]  # `import rich` raises ImportError
    try:
        import structlog.dev  # noqa: F401  (with structlog.processors and .tracebacks)
    finally:
        del sys.modules["rich"]


_import_structlog_without_rich()
