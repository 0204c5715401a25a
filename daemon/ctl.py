"""freshctl: the thin admin client. Tables for people, --json for scripts.

Exit codes (freshd.ctl_exit.EXIT_TABLE; README.md and `freshctl --help` show the same):
0 ok; 1 another error (bad_request, internal, ...; `health` unhealthy; `watch` of a job that ended
failed or cancelled); 2 usage; 3 the daemon is not running or its socket cannot be reached;
4 not_found; 5 conflict; 6 forbidden; 7 timeout or unavailable; 130 interrupted (Ctrl-C);
141 stdout closed early (`| head`).

Output: a table fitted to the terminal (rich) when stdout is a terminal, plain text otherwise
(what scripts and tests read); `--json` prints the daemon's JSON, and errors as
``{"error": {"code", "message"}}`` on stdout.

This module runs a command (`main`): the request goes through freshd.client and the reply is
printed.  The command line is freshd.ctl_args, the output freshd.ctl_output, the exit statuses
freshd.ctl_exit.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from freshd.client import Client, Unreachable
from freshd.client import ClientError as DaemonError
from freshd.ctl_args import Parser, build_parser, completion_script, request_for
from freshd.ctl_exit import EXIT_BROKEN_PIPE, EXIT_CODES, EXIT_ERROR, EXIT_INTERRUPTED, EXIT_OK
from freshd.ctl_output import STYLE, render, rendered, show_connection, table, watch_lines, watch_view
from freshd.paths import default_socket_path, untrusted_socket_dir

# STYLE, rendered, show_connection, table and watch_* are freshd.ctl_output's: tests/test_ctl.py reaches them as ctl.X
__all__ = [
    "STYLE",
    "call",
    "check_socket_dir",
    "main",
    "rendered",
    "report_error",
    "run",
    "run_watch",
    "show_connection",
    "stream",
    "table",
    "watch_lines",
    "watch_view",
]


def check_socket_dir(sock_path: Path) -> None:
    """Refuse a socket in a /tmp directory someone else made: what we send (credentials) would be theirs."""
    if (problem := untrusted_socket_dir(sock_path)) is not None:
        raise Unreachable(f"refusing to connect: {problem}")


def call(sock_path: Path, cmd: str, args: dict[str, Any], *, timeout: float) -> Any:
    """One request through freshd.client (the same client applications use)."""
    check_socket_dir(sock_path)
    return Client(sock_path, timeout=timeout).call(cmd, args)


def stream(sock_path: Path, cmd: str, args: dict[str, Any], *, timeout: float) -> Iterator[Any]:
    """A subscription: each event until the daemon's final reply."""
    check_socket_dir(sock_path)
    return Client(sock_path, timeout=timeout).stream(cmd, args)


def run_watch(sock_path: Path, args: dict[str, Any], *, as_json: bool, timeout: float) -> int:
    """Stream a job's (or every job's) progress until it ends; 1 if the job ended failed or cancelled."""
    shown: dict[int, dict[str, Any]] = {}
    events = stream(sock_path, "watch", args, timeout=timeout)
    if STYLE.rich:
        from rich.console import Console
        from rich.live import Live

        with Live(watch_view(shown), console=Console(highlight=False), refresh_per_second=4,
                  auto_refresh=True) as live:
            for event in events:
                shown[event["job"]["id"]] = event["job"]
                live.update(watch_view(shown))
    else:
        for event in events:
            job = event["job"]
            shown[job["id"]] = job
            if as_json:
                print(json.dumps(event), flush=True)
            else:
                lines = watch_lines(job)
                print(lines[0] + " | " + "; ".join(line.strip() for line in lines[1:]), flush=True)
    ended = [job for job in shown.values() if job["status"] in ("failed", "cancelled")]
    return EXIT_ERROR if args.get("id") is not None and ended else EXIT_OK


def report_error(code: str, message: str, *, as_json: bool) -> int:
    """One error: JSON on stdout under --json, else one line on stderr; the exit status for its code."""
    if as_json:
        print(json.dumps({"error": {"code": code, "message": message}}))
    else:
        print(f"freshctl: {message}", file=sys.stderr)
    return EXIT_CODES.get(code, EXIT_ERROR)


def run(argv: list[str] | None) -> int:
    Parser.json_errors = "--json" in (sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "completion":
        print(completion_script(args.shell, parser), end="")
        return EXIT_OK
    cmd, request_args = request_for(args, parser)
    request_args = {k: v for k, v in request_args.items() if v is not None}
    sock_path = args.socket or default_socket_path()
    STYLE.rich = sys.stdout.isatty() and not args.json
    try:
        if cmd == "watch":
            return run_watch(sock_path, request_args, as_json=args.json, timeout=args.timeout)
        result = call(sock_path, cmd, request_args, timeout=args.timeout)
    except Unreachable as exc:
        return report_error("unreachable", str(exc), as_json=args.json)
    except DaemonError as exc:
        return report_error(exc.code, str(exc), as_json=args.json)
    print(json.dumps(result, indent=2) if args.json else render(cmd, result))
    if cmd == "tokens.add" and not args.json:
        print(f"freshctl: token {result['id']} for tenant {result['tenant']}: it is shown only now, store it "
              "(freshd keeps only its hash)", file=sys.stderr)
    if cmd == "sync" and not result["created"]:
        print(f"freshctl: job {result['job_id']} is already {result['status']}", file=sys.stderr)
    if cmd == "health" and not result["healthy"]:
        return EXIT_ERROR  # for scripts and monitoring: the figures above say why
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """The `freshctl` command.  Ctrl-C and a reader that goes away (`| head`) end it quietly."""
    try:
        status = run(argv)
        sys.stdout.flush()  # a closed pipe shows here, not at the interpreter's exit
        return status
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # nobody reads stdout any more: point it at /dev/null so the final flush at exit is quiet too
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


if __name__ == "__main__":
    sys.exit(main())
