"""`freshd`: the daemon and its tools.

    freshd run [--config PATH]          run the daemon (systemd's ExecStart)
    freshd check-config [--config PATH] validate a config file and exit
    freshd migrate [--config PATH]      apply pending database migrations, update the typed views, exit
    freshd simulate PROVIDER ...        run a provider simulator on loopback
    freshd demo                         embedded PostgreSQL + simulators + daemon
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import trio

from freshd import __version__
from freshd.errors import ConfigError, FreshdError, StartupError, StoreUnavailable


def _load(path: Path | None):  # type: ignore[no-untyped-def]
    from freshd.config import load_config

    return load_config(path)


MALLOC_ARENAS = 2
_M_ARENA_MAX = -8  # glibc's mallopt parameter number


SWITCH_INTERVAL = 0.001  # seconds a thread may hold the GIL while another waits for it (default 0.005)


def limit_malloc_arenas() -> None:
    """glibc gives each thread that allocates its own memory arena (up to 8 per core), and keeps
    them: the worker threads that encode pages and run the database calls each held one.  Two
    arenas bound that (a 100k initial sync's peak RSS: 104 MB -> 95 MB in one run of
    bench/sync_woocommerce.py).  MALLOC_ARENA_MAX in the environment wins; no-op off glibc."""
    if os.environ.get("MALLOC_ARENA_MAX") or not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return  # not glibc (musl has no arenas to bound)
    mallopt(_M_ARENA_MAX, MALLOC_ARENAS)


def _cmd_run(args: argparse.Namespace) -> int:
    from freshd.app import run_daemon
    from freshd.logs import configure_logging

    limit_malloc_arenas()  # before any thread starts
    # The worker threads that commit batches wait on the database, then for the GIL while the trio
    # thread and the encoder parse and encode: each of a commit's round trips waited up to the 5 ms
    # default.  At 1 ms a 900-record commit beside a busy thread took 30-32 ms instead of 66-69 ms
    # (the same quiet: 22 ms), and a 100k initial sync ran 4 % faster (3 alternating pairs).
    sys.setswitchinterval(SWITCH_INTERVAL)

    config = _load(args.config)
    if config.database_url is None:
        from freshd.embedded_pg import require_embedded

        require_embedded()  # before anything starts: one line, exit 1
    configure_logging(config.log.level, config.log.format)
    try:
        trio.run(lambda: run_daemon(config, config_path=args.config))
    except BaseExceptionGroup as group:
        # a start-up failure inside the daemon's nursery arrives wrapped: report it like the others
        sole: BaseException = group
        while isinstance(sole, BaseExceptionGroup) and len(sole.exceptions) == 1:
            sole = sole.exceptions[0]
        if isinstance(sole, FreshdError):
            raise sole from None
        raise
    return 0


def _cmd_check_config(args: argparse.Namespace) -> int:
    config = _load(args.config)
    print(f"ok: {len(config.connections)} connection(s)")
    return 0


def _cmd_migrate(args: argparse.Namespace) -> int:
    from freshd.store.migrate import apply_migrations
    from freshd.store.views import ensure_views

    config = _load(args.config)
    if config.database_url is None:
        print("freshd: no database_url configured (the embedded database migrates itself at start)",
              file=sys.stderr)
        return 2
    applied = apply_migrations(config.database_url)
    print(f"applied {len(applied)} migration(s)" + "".join(f"\n  {m.version:04d} {m.name}" for m in applied))
    built = ensure_views(config.database_url)
    print(f"rebuilt {len(built)} view(s)" + "".join(f"\n  {name}" for name in built))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from freshd.demo import run_demo
    from freshd.embedded_pg import require_embedded

    require_embedded()

    return run_demo(records=args.records, state_dir=args.state_dir)


def _cmd_keygen(args: argparse.Namespace) -> int:
    from freshd.secrets import generate_key_file

    try:
        generate_key_file(args.path)
    except FileExistsError:
        print(f"freshd: {args.path} exists; a key file is never overwritten", file=sys.stderr)
        return 1
    print(f"wrote a new key to {args.path} (mode 0600). To rotate: list it first in [secrets] key_files,"
          " keep the old ones after it, restart; the daemon re-seals everything with the new key.")
    return 0


def _cmd_events(args: argparse.Namespace) -> int:
    """Tail a stream (XREAD BLOCK): one line per event, type, record and version first."""
    import redis

    client = redis.Redis.from_url(args.redis_url)
    last: Any = "0" if args.from_start else "$"
    try:
        while True:
            reply: Any = client.xread({args.stream: last}, block=5000, count=100)
            for _, entries in reply or []:
                for entry_id, fields in entries:
                    last = entry_id
                    event = json.loads(fields[b"event"])
                    print(f"{event['type']:15} {event['entity']}/{event['external_id']} v{event['version']}"
                          f"{' (historical)' if event.get('historical') else ''}  {event['id']}", flush=True)
    except redis.RedisError as exc:
        print(f"freshd events: {args.redis_url}: {exc}", file=sys.stderr)
        return 1
    except (BrokenPipeError, KeyboardInterrupt):  # `| head`, Ctrl-C: a quiet end
        sys.stderr.close()
        return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "simulate":
        from freshd.connectors.simulate import main as simulate_main

        return simulate_main(argv[1:])

    parser = argparse.ArgumentParser(prog="freshd", description="Keeps API connections synced into PostgreSQL.")
    parser.add_argument("--version", action="version", version=f"freshd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, func, text in (
        ("run", _cmd_run, "run the daemon"),
        ("check-config", _cmd_check_config, "validate the configuration and exit"),
        ("migrate", _cmd_migrate, "apply pending database migrations and exit"),
    ):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("--config", type=Path, default=None,
                         help="TOML config file (default /etc/freshd/freshd.toml if it exists)")
        cmd.set_defaults(func=func)
    demo = sub.add_parser("demo", help="embedded PostgreSQL + WooCommerce simulators + the daemon")
    demo.add_argument("--records", type=int, default=2000, help="records per entity in each simulated store")
    demo.add_argument("--state-dir", type=Path, default=None)
    demo.set_defaults(func=_cmd_demo)
    sub.add_parser("simulate", help="run a provider simulator (freshd simulate --help)")
    events = sub.add_parser("events", help="print the change events of a stream as they arrive (Ctrl-C stops)")
    events.add_argument("stream", help="e.g. freshd:acme:customers")
    events.add_argument("--redis-url", default=os.environ.get("FRESHD_REDIS_URL", "redis://127.0.0.1:6379/0"))
    events.add_argument("--from-start", action="store_true", help="the whole stream first, then new events")
    events.set_defaults(func=_cmd_events)
    keygen = sub.add_parser("keygen", help="write a new secrets key file (for [secrets] key_files)")
    keygen.add_argument("path", type=Path)
    keygen.set_defaults(func=_cmd_keygen)
    args = parser.parse_args(argv)
    try:
        result: int = args.func(args)
        return result
    except ConfigError as exc:
        print(f"freshd: invalid configuration: {exc}", file=sys.stderr)
        return 2
    except (StoreUnavailable, StartupError) as exc:
        print(f"freshd: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
