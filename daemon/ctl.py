"""freshctl: the thin admin client. Tables for people, --json for scripts.

Exit codes (EXIT_TABLE below; README.md and `freshctl --help` show the same):
0 ok; 1 another error (bad_request, internal, ...; `health` unhealthy; `watch` of a job that ended
failed or cancelled); 2 usage; 3 the daemon is not running or its socket cannot be reached;
4 not_found; 5 conflict; 6 forbidden; 7 timeout or unavailable; 130 interrupted (Ctrl-C);
141 stdout closed early (`| head`).

Output: a table fitted to the terminal (rich) when stdout is a terminal, plain text otherwise
(what scripts and tests read); `--json` prints the daemon's JSON, and errors as
``{"error": {"code", "message"}}`` on stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import shutil
import sys
import textwrap
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from freshd import __version__, ctl_twoway
from freshd.admin.protocol import API_VERSION
from freshd.client import Client, Unreachable
from freshd.client import ClientError as DaemonError
from freshd.paths import default_socket_path, untrusted_socket_dir

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3
EXIT_NOT_FOUND, EXIT_CONFLICT, EXIT_FORBIDDEN, EXIT_UNAVAILABLE = 4, 5, 6, 7
EXIT_INTERRUPTED, EXIT_BROKEN_PIPE = 130, 141
# the protocol's error codes (freshd.admin.protocol.ErrorCode) -> exit status; any other code is 1
EXIT_CODES = {"not_found": EXIT_NOT_FOUND, "conflict": EXIT_CONFLICT, "forbidden": EXIT_FORBIDDEN,
              "timeout": EXIT_UNAVAILABLE, "unavailable": EXIT_UNAVAILABLE, "unreachable": EXIT_UNREACHABLE,
              "usage": EXIT_USAGE}
EXIT_TABLE = """exit status:
  0    ok
  1    another error (bad_request, internal, ...), `health` unhealthy, `watch` of a job that failed or was cancelled
  2    usage: bad arguments
  3    freshd is not running, or its socket cannot be reached
  4    not_found
  5    conflict (e.g. the job already ended, the minimum gap between syncs)
  6    forbidden
  7    timeout or unavailable (the daemon, its database or a provider did not answer)
  130  interrupted (Ctrl-C)
  141  stdout was closed early (e.g. `| head`)"""


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


class Style:
    """How output looks: `rich` in a terminal (tables fitted to its width, live progress), else plain
    text, the same every time (what scripts and tests read)."""

    rich = False


STYLE = Style()
NUMBER = re.compile(r"^[~+-]?\d[\d,]*(\.\d+)?(%|s)?$")


def terminal_width() -> int:
    return shutil.get_terminal_size((100, 24)).columns


def rendered(renderable: Any) -> str:
    """A rich renderable as text for this terminal (its width, its colours; NO_COLOR is honoured)."""
    from rich.console import Console

    console = Console(file=io.StringIO(), width=terminal_width(), force_terminal=True, highlight=False)
    console.print(renderable)
    text: str = console.file.getvalue()  # type: ignore[attr-defined]
    return text.rstrip("\n")


def duration(seconds: float) -> str:
    """1h02m, 4m05s, 9s."""
    total = max(0, round(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def bar(fraction: float, width: int = 24) -> str:
    filled = round(max(0.0, min(1.0, fraction)) * width)
    return "[" + "#" * filled + "-" * (width - filled) + "]"


def _done(p: dict[str, Any]) -> int:
    return int(p["processed"] + p["failed"] + p["skipped"])


def _fraction(job: dict[str, Any], p: dict[str, Any]) -> float:
    total = p.get("total")
    return _done(p) / total if total else (1.0 if job["status"] == "completed" else 0.0)


def _rate(job: dict[str, Any], p: dict[str, Any]) -> str:
    """The current rate, shown only while the job runs (a paused or finished job has none)."""
    return f"{p.get('rate', 0):,.0f} rec/s" if job["status"] == "running" else ""


def job_headline(job: dict[str, Any]) -> str:
    line = f"job {job['id']} {job['connection']} {job['kind']} {job['status']}"
    if job.get("percent") is not None:
        line += f" {job['percent']}%"
    if job["status"] == "running":
        rate = sum(p.get("rate", 0) for p in job["progress"].values())
        line += f" {rate:,.0f} rec/s"
        if job.get("eta_seconds") is not None:
            line += f" eta {duration(job['eta_seconds'])}"
    return line


def watch_lines(job: dict[str, Any]) -> list[str]:
    lines = [job_headline(job)]
    for entity, p in job["progress"].items():
        total = p.get("total")
        rate = _rate(job, p)
        lines.append(f"  {entity:14} {bar(_fraction(job, p))} {_done(p)}/{total if total is not None else '?'}"
                     + (f"  {rate}" if rate else "") + (f"  {p['failed']} failed" if p["failed"] else ""))
    return lines


def watch_view(jobs: dict[int, dict[str, Any]]) -> Any:
    """What `watch` shows in a terminal: per job a headline (status, %, rate, ETA) and a bar per entity."""
    from rich.console import Group
    from rich.progress_bar import ProgressBar
    from rich.table import Table
    from rich.text import Text

    parts: list[Any] = []
    for job in jobs.values():
        parts.append(Text(job_headline(job), style="bold"))
        grid = Table.grid(padding=(0, 2))
        grid.add_column(no_wrap=True)
        grid.add_column(width=min(40, max(10, terminal_width() // 3)))
        grid.add_column(justify="right", no_wrap=True)
        grid.add_column(justify="right", no_wrap=True)
        grid.add_column(no_wrap=True)
        for entity, p in job["progress"].items():
            total = p.get("total")
            done = _done(p)
            progress = ProgressBar(total=float(total) if total else (None if job["status"] == "running" else 1.0),
                                   completed=float(done) if total else _fraction(job, p))
            grid.add_row(f"  {entity}", progress, f"{done:,}/{total:,}" if total is not None else f"{done:,}/?",
                         _rate(job, p), f"{p['failed']} failed" if p["failed"] else "")
        parts.append(grid)
    return Group(*parts)


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


# --- formatting --------------------------------------------------------------------------------


def ago(value: str | None) -> str:
    if not value:
        return "-"
    moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    seconds = (datetime.now(UTC) - moment).total_seconds()
    future = seconds < 0
    seconds = abs(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            text = f"{int(seconds // size)}{unit}"
            break
    else:
        text = f"{int(seconds)}s"
    return f"in {text}" if future else f"{text} ago"


def due(value: str | None) -> str:
    """A next-sync time: in the past means due (the next sync sweep queues it), not "ago"."""
    text = ago(value)
    return f"due ({text.removesuffix(' ago')} overdue)" if text.endswith(" ago") else text


def human(value: Any) -> str:
    """A value as a person reads it: "-" for nothing, yes/no, comma lists, key=value pairs."""
    if value is None or value in ("", [], {}):
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list | tuple):
        return ", ".join(_nested(v) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k}={_nested(v)}" for k, v in value.items())
    if isinstance(value, int | float):
        return f"{value:,}" if isinstance(value, int) else f"{value:g}"
    return str(value)


def _nested(value: Any) -> str:
    """A value inside a list or table: a list of plain values as a,b; deeper structures as JSON."""
    if isinstance(value, list | tuple) and not any(isinstance(v, dict | list | tuple) for v in value):
        return ",".join(human(v) for v in value)
    return json.dumps(value) if isinstance(value, dict | list | tuple) else human(value)


def paragraph(text: str) -> str:
    """A line of prose: wrapped to the terminal's width there, as is elsewhere."""
    return textwrap.fill(text, width=terminal_width()) if STYLE.rich else text


def table(headers: list[str], rows: list[list[Any]]) -> str:
    """Columns of numbers are right-aligned; in a terminal the table fits its width (long cells wrap)."""
    cells = [[("-" if v is None else str(v)) for v in row] for row in rows]
    numeric = [bool(cells) and all(r[i] == "-" or NUMBER.match(r[i]) for r in cells)
               and any(r[i] != "-" for r in cells) for i in range(len(headers))]
    if STYLE.rich:
        from rich.table import Table

        # headers and numbers stay whole; when the terminal is too narrow, text cells wrap
        grid = Table(box=None, padding=(0, 1), pad_edge=False, show_edge=False, header_style="bold underline")
        for header, right in zip(headers, numeric, strict=True):
            grid.add_column(header, justify="right" if right else "left", no_wrap=right, overflow="fold",
                            min_width=max(len(word) for word in header.split()))
        for row in cells:
            grid.add_row(*row)
        return rendered(grid)
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]

    def line(row: list[str]) -> str:
        return "  ".join(c.rjust(w) if right else c.ljust(w)
                         for c, w, right in zip(row, widths, numeric, strict=True)).rstrip()

    return "\n".join([line(headers), *(line(row) for row in cells)])


def progress_text(job: dict[str, Any]) -> str:
    parts = []
    for entity, p in (job.get("progress") or {}).items():
        total = p.get("total")
        parts.append(f"{entity} {p['processed']}/{total if total is not None else '?'}"
                     + (f" ({p['failed']} failed)" if p.get("failed") else ""))
    return ", ".join(parts) or "-"


def show_status(result: dict[str, Any]) -> str:
    head = (f"freshd {result['version']} (api {result['api_version']}), up since {ago(result['started_at'])}, "
            f"store {result['store']['state']}, metrics {result.get('metrics_url') or 'off'}")
    rows = [[c["name"], c["provider"], c["tenant"], c["state"], c.get("breaker", "-"), c["records"],
             ago(c["last_success_at"]), due(c["next_sync_at"]), c.get("error") or ""] for c in result["connections"]]
    return paragraph(head) + "\n\n" + table(["NAME", "PROVIDER", "TENANT", "STATE", "BREAKER", "RECORDS",
                                             "LAST SUCCESS", "NEXT SYNC", "ERROR"], rows)


def show_members(result: list[dict[str, Any]]) -> str:
    rows = [[m["id"] + (" (this one)" if m.get("self") else ""), m["host"], m["pid"], "yes" if m["alive"] else "no",
             m["connections"], m["started_at"] or "-"] for m in result]
    return table(["MEMBER", "HOST", "PID", "ALIVE", "CONNECTIONS", "STARTED"], rows)


def show_jobs(result: dict[str, Any]) -> str:
    rows = [[j["id"], j["connection"], j["kind"], j["status"], "-" if j["percent"] is None else f"{j['percent']}%",
             progress_text(j), ago(j["started_at"]), j.get("error") or ""] for j in result["jobs"]]
    return table(["ID", "CONNECTION", "KIND", "STATUS", "DONE", "PROGRESS", "STARTED", "ERROR"], rows) + \
        f"\n({len(result['jobs'])} of {result['total']})"


def show_job(job: dict[str, Any]) -> str:
    lines = [f"job {job['id']}  {job['connection']}  {job['kind']}  {job['status']}"
             + (f"  {job['percent']}%" if job.get("percent") is not None else "")
             + (f"  eta {job['eta_seconds']}s" if job.get("eta_seconds") is not None else ""),
             f"started {ago(job['started_at'])}, finished {ago(job['finished_at'])}"]
    if job.get("options"):
        lines.append("options: " + ", ".join(f"{k} {','.join(v) if isinstance(v, list) else v}"
                                             for k, v in job["options"].items()))
    if job.get("error"):
        lines.append(f"error: {job['error']}")
    dry = bool((job.get("options") or {}).get("dry_run"))

    def total(p: dict[str, Any]) -> str:
        return "-" if p.get("total") is None else f"~{p['total']}" if p.get("estimated") else str(p["total"])

    rows = [[e, total(p), p["processed"], p["failed"], p["skipped"], p.get("pending"), p.get("created", 0),
             p.get("changed", 0), p.get("deleted", 0)] for e, p in job["progress"].items()]
    t = job.get("totals") or {}
    if len(rows) > 1 and t:
        rows.append(["(all)", t.get("total"), t.get("processed"), t.get("failed"), t.get("skipped"), t.get("pending"),
                     sum(r[6] for r in rows), sum(r[7] for r in rows), sum(r[8] for r in rows)])
    verbs = ["WOULD CREATE", "WOULD CHANGE", "WOULD DELETE"] if dry else ["CREATED", "CHANGED", "DELETED"]
    lines += ["", table(["ENTITY", "TOTAL", "PROCESSED", "FAILED", "SKIPPED", "PENDING", *verbs], rows)]
    if any(p.get("estimated") for p in job["progress"].values()):
        lines.append("(~: an estimate, the provider offers no count)")
    for item in job.get("failed_items") or []:
        lines.append(f"  failed {item['entity']} {item.get('external_id') or '?'}: {item['reason']}")
    return "\n".join(lines)


def show_stats(result: dict[str, Any]) -> str:
    rows = []
    for s in result["stats"]:
        rate = "-" if s["success_rate"] is None else f"{100 * s['success_rate']:.1f}%"
        duration = "-" if s["avg_duration_seconds"] is None else f"{s['avg_duration_seconds']:.1f}s"
        rows.append([s["day"], s["connection"], s["tenant"], s["syncs"], rate, sum(s["records"].values()),
                     f"+{s['created']} ~{s['changed']} -{s['deleted']}", s["failed_items"],
                     ", ".join(f"{k} {n}" for k, n in sorted(s["errors"].items())) or "-", duration])
    per_tenant = [[t["day"], t["tenant"], t["connections"], t["syncs"],
                   "-" if t["success_rate"] is None else f"{100 * t['success_rate']:.1f}%", t["records"],
                   f"+{t['created']} ~{t['changed']} -{t['deleted']}", t["failed_items"]]
                  for t in result.get("tenants") or []]
    return table(["DAY", "CONNECTION", "TENANT", "SYNCS", "SUCCESS", "RECORDS", "CREATED/CHANGED/DELETED",
                  "FAILED ITEMS", "ERRORS", "AVG TIME"], rows) + \
        f"\n({len(rows)} row(s), last {result['days']} day(s); kept {result['retention_days']} days)\n\n" + \
        table(["DAY", "TENANT", "CONNECTIONS", "SYNCS", "SUCCESS", "RECORDS", "CREATED/CHANGED/DELETED",
               "FAILED ITEMS"], per_tenant)


def show_connection(c: dict[str, Any]) -> str:
    keys = ["name", "provider", "tenant", "base_url", "source", "state", "records", "last_success_at",
            "next_sync_at", "error", "breaker", "breaker_retry_at", "rate_limit", "token_expires_at", "health",
            "probed_at", "credential_keys", "options", "created_at"]
    times = {"last_success_at": ago, "next_sync_at": due, "breaker_retry_at": ago, "token_expires_at": ago,
             "probed_at": ago, "created_at": ago}

    def value(key: str) -> str:
        raw = c.get(key)
        if key in times and raw:
            return f"{raw} ({times[key](raw)})"
        return human(raw)

    out = [f"{k:16} {value(k)}" for k in keys if k in c]
    if c.get("job"):
        out.append(f"{'job':16} {c['job']['id']} {c['job']['status']} {progress_text(c['job'])}")
    for held in c.get("held_deletions") or []:
        out.append(f"{'held deletions':16} {held['entity']}: {held['count']} of {held['live']} records (job "
                   f"{held['job_id']}); apply: freshctl sync {c['name']} --full --confirm-deletes")
    return "\n".join(out)


# --- commands ----------------------------------------------------------------------------------


def pairs(values: list[str] | None, flag: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in values or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise argparse.ArgumentTypeError(f"{flag} takes KEY=VALUE, got {item!r}")
        out[key] = value
    return out


def option_value(text: str) -> Any:
    """`--option` values: JSON when they read as JSON (5, true, ["a"], {"kind": "bearer"}), else the text."""
    try:
        return json.loads(text)
    except ValueError:
        return text


class Parser(argparse.ArgumentParser):
    """argparse, with usage errors as JSON under --json (scripts parse one form of error)."""

    json_errors = False

    def error(self, message: str) -> Any:  # argparse's NoReturn, typed loosely for the override
        if Parser.json_errors:
            print(json.dumps({"error": {"code": "usage", "message": f"{self.prog}: {message}"}}))
            sys.exit(EXIT_USAGE)
        super().error(message)


def build_parser() -> Parser:
    raw = argparse.RawDescriptionHelpFormatter
    parser = Parser(prog="freshctl", description="Control a running freshd over its admin socket.",
                    formatter_class=raw, epilog="examples:\n  freshctl status\n  J=$(freshctl sync shop) && "
                    "freshctl watch \"$J\"\n  freshctl --json jobs --status failed\n\n" + EXIT_TABLE)
    parser.add_argument("--version", action="version", version=f"freshctl {__version__} (admin API {API_VERSION})",
                        help="print freshctl's version and the admin API version it speaks")
    parser.add_argument("--socket", type=Path, default=None, metavar="PATH",
                        help=f"admin socket (default: $FRESHD_SOCKET or {default_socket_path()}); "
                             "e.g. --socket /run/freshd/admin.sock")
    parser.add_argument("--json", action="store_true",
                        help="print the daemon's JSON reply (errors too: {\"error\": {\"code\", \"message\"}})")
    parser.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS",
                        help="how long to wait for the daemon's answer (default 30); e.g. --timeout 5")
    # `--json` may also follow the command (`freshctl status --json`); SUPPRESS keeps the global value
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="print the daemon's JSON reply (errors too)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(group: Any, name: str, text: str, *examples: str) -> argparse.ArgumentParser:
        cmd: argparse.ArgumentParser = group.add_parser(
            name, parents=[common], help=text, description=text[:1].upper() + text[1:] + ".",
            formatter_class=raw, epilog="example" + ("s" if len(examples) > 1 else "") + ":\n"
            + "\n".join(f"  {e}" for e in examples))
        return cmd

    command(sub, "status", "the daemon and its connections", "freshctl status")
    conns = command(sub, "connections", "list, show, add, remove connections; set their credentials",
                    "freshctl connections", "freshctl connections show shop")
    csub = conns.add_subparsers(dest="action", metavar="ACTION")
    command(csub, "list", "every connection you may see, with its state", "freshctl connections list")
    command(csub, "show", "one connection in detail", "freshctl connections show shop").add_argument(
        "name", help="the connection's name")
    add = command(csub, "add", "add a connection (checked first; its initial sync is queued)",
                  "freshctl connections add shop --provider woocommerce --base-url https://shop.example "
                  "--credential consumer_key=ck_... --credential consumer_secret=cs_...")
    add.add_argument("name", help="a name for it: letters, digits, '.', '_' or '-'")
    add.add_argument("--provider", required=True,
                     help="amazon_sp, odoo, orion, powens, rest or woocommerce; e.g. --provider woocommerce")
    add.add_argument("--base-url", required=True, metavar="URL",
                     help="the provider's API root; e.g. --base-url https://shop.example")
    add.add_argument("--credential", action="append", metavar="KEY=VALUE", required=True,
                     help="a credential (repeat for each key the provider needs); e.g. --credential api_key=...")
    add.add_argument("--tenant", default=None, help="the tenant it belongs to (default: default); e.g. --tenant acme")
    add.add_argument("--option", action="append", metavar="KEY=VALUE",
                     help="a provider option; VALUE is read as JSON if it is JSON (5, true, [..], {..}), else as "
                          "text; e.g. --option page_concurrency=4")
    add.add_argument("--check", action=argparse.BooleanOptionalAction, default=True,
                     help="probe the provider with these credentials first and store nothing if it refuses them "
                          "or cannot be reached (default: on; --no-check skips it)")
    remove = command(csub, "remove", "delete a connection and all its data (needs --purge)",
                     "freshctl connections remove shop --purge")
    remove.add_argument("name", help="the connection's name")
    remove.add_argument("--purge", action="store_true",
                        help="yes, delete its records, cursors and jobs (a detached or disabled connection's too)")
    setcred = command(csub, "set-credential", "new credential values (re-authentication); KEY= removes one; "
                      "a sync starts at once", "freshctl connections set-credential shop consumer_secret=cs_new")
    setcred.add_argument("name", help="the connection's name")
    setcred.add_argument("credential", nargs="+", metavar="KEY=VALUE", help="a credential to set (KEY= removes it)")
    sync = command(sub, "sync", "queue a sync; prints the job id alone (the live one if a job is already running)",
                   "J=$(freshctl sync shop)", "freshctl sync shop --full --entities customers,orders")
    sync.add_argument("name", help="the connection's name")
    sync.add_argument("--full", action="store_true", help="list everything (and reconcile deletions), not just "
                                                          "what changed")
    sync.add_argument("--force", action="store_true", help="ignore the minimum gap between two syncs")
    sync.add_argument("--confirm-deletes", action="store_true",
                      help="with --full: apply deletions held for being over [sync] max_delete_share "
                           "(see `connections show`), once this listing is complete")
    sync.add_argument("--entities", metavar="A,B", help="sync only these entities (comma-separated); "
                                                        "e.g. --entities customers,orders")
    sync.add_argument("--since", metavar="DATE", help="re-read from this date or time (ISO 8601, UTC unless "
                                                      "it says otherwise); other cursors are left as they are; "
                                                      "e.g. --since 2026-01-31")
    sync.add_argument("--dry-run", action="store_true",
                      help="fetch and count what would be created, changed and deleted; write nothing")
    jobs = command(sub, "jobs", "job history, newest first", "freshctl jobs --connection shop --status failed")
    jobs.add_argument("--connection", metavar="NAME", help="only this connection's jobs; e.g. --connection shop")
    jobs.add_argument("--tenant", help="only this tenant's jobs; e.g. --tenant acme")
    jobs.add_argument("--status", help="queued, running, paused, completed, partial, failed, cancelled, interrupted")
    jobs.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    jobs.add_argument("--offset", type=int, default=0, help="skip this many first (default 0)")
    command(sub, "ensure", "queue a sync if the data is missing or stale (else say how old it is)",
            "freshctl ensure shop").add_argument("name", help="the connection's name")
    stats = command(sub, "stats", "daily statistics per connection (computed by the cleanup sweep)",
                    "freshctl stats --days 30 --tenant acme")
    stats.add_argument("--days", type=int, default=7, help="the last N days (default 7)")
    stats.add_argument("--connection", metavar="NAME", help="only this connection; e.g. --connection shop")
    stats.add_argument("--tenant", help="only this tenant; e.g. --tenant acme")
    cons = command(sub, "consumers", "applications reading the change events (docs/EVENTS.md)",
                   "freshctl consumers", "freshctl consumers add crm --tenant acme")
    consub = cons.add_subparsers(dest="action", metavar="ACTION")
    command(consub, "list", "the applications registered", "freshctl consumers list")
    cadd = command(consub, "add", "register an application: its consumer groups, then a backfill of the history",
                   "freshctl consumers add crm --tenant acme --entities customers,orders")
    cadd.add_argument("app", help="the application's name (its consumer group's name)")
    cadd.add_argument("--tenant", required=True, help="whose events it reads; e.g. --tenant acme")
    cadd.add_argument("--entities", metavar="A,B", help="only these entities (default: every entity of the tenant)")
    cadd.add_argument("--skip-history", action="store_true", help="no backfill: live events only")
    command(consub, "status", "per entity: records, read, pending, lag; the backfill",
            "freshctl consumers status crm").add_argument("app", help="the application's name")
    cback = command(consub, "backfill", "queue a backfill (or, with --dry-run, count and sample it)",
                    "freshctl consumers backfill crm --since 2026-11-01 --entities customers --dry-run")
    cback.add_argument("app", help="the application's name")
    cback.add_argument("--since", metavar="DATE", help="only records created or changed since (ISO 8601); "
                                                       "e.g. --since 2026-11-01")
    cback.add_argument("--entities", metavar="A,B", help="only these entities; e.g. --entities customers")
    cback.add_argument("--dry-run", action="store_true", help="count and sample, publish nothing")
    for name, text in (("remove", "its consumer groups and backfills go; other applications are untouched"),
                       ("pause", "pause its backfill"), ("resume", "resume its backfill"),
                       ("cancel", "cancel its backfill")):
        command(consub, name, text, f"freshctl consumers {name} crm").add_argument(
            "app", help="the application's name")
    ctl_twoway.add_commands(sub, command)
    tokens = command(sub, "tokens", "HTTP API bearer tokens, each scoped to a tenant (docs/HTTP.md)",
                     "T=$(freshctl tokens add --tenant acme --label web)", "freshctl tokens list")
    tsub = tokens.add_subparsers(dest="action", required=True, metavar="ACTION")
    token_add = command(tsub, "add", "a new token for a tenant, printed once (only its hash is kept)",
                        "freshctl tokens add --tenant acme --label web")
    token_add.add_argument("--tenant", required=True, help="the tenant it may see; e.g. --tenant acme")
    token_add.add_argument("--label", help="what it is for, shown by `tokens list`; e.g. --label web")
    command(tsub, "list", "tokens (never their values)", "freshctl tokens list --tenant acme").add_argument(
        "--tenant", help="only this tenant's; e.g. --tenant acme")
    command(tsub, "revoke", "revoke a token at once", "freshctl tokens revoke 3").add_argument(
        "id", type=int, help="the token's id (see `tokens list`)")
    command(sub, "health", "health figures; exit 0 when healthy, 1 otherwise", "freshctl health || alert")
    command(sub, "members", "the daemons sharing this database and the connections each runs", "freshctl members")
    command(sub, "schedule", "the periodic sweeps and their next run", "freshctl schedule")
    command(sub, "trigger", "run a sweep now", "freshctl trigger health").add_argument(
        "sweep", help="sync, health, tokens or cleanup (see `freshctl schedule`)")
    watch = command(sub, "watch", "live progress of a job (or --all): rate and ETA; exit 1 if the job fails",
                    "freshctl watch 42", "freshctl watch --all")
    watch.add_argument("id", type=int, nargs="?", help="the job's id")
    watch.add_argument("--all", action="store_true", help="every live job, until you stop it (Ctrl-C)")
    for name, text in (("job", "one job in detail"), ("pause", "pause a job at the next page boundary"),
                       ("resume", "resume a paused job"), ("cancel", "cancel a job (keeps what was committed)"),
                       ("retry", "fetch again, by id, the items a job recorded as failed; prints the new job id")):
        command(sub, name, text, f"freshctl {name} 42").add_argument("id", type=int, help="the job's id")
    completion = command(sub, "completion", "print a shell completion script",
                         "source <(freshctl completion bash)    # in ~/.bashrc",
                         "source <(freshctl completion zsh)     # in ~/.zshrc")
    completion.add_argument("shell", choices=["bash", "zsh"], help="bash or zsh")
    return parser


# --- shell completion ----------------------------------------------------------------------------


def command_tree(parser: argparse.ArgumentParser, path: str = "") -> dict[str, tuple[list[str], list[str]]]:
    """Command path ("" for the top, "connections add") -> (its subcommands, its options), from argparse."""
    subs: list[str] = []
    options: list[str] = []
    tree: dict[str, tuple[list[str], list[str]]] = {}
    for action in parser._actions:
        options += [o for o in action.option_strings if o.startswith("--")]
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                subs.append(name)
                tree.update(command_tree(child, f"{path} {name}".strip()))
        elif action.choices and not action.option_strings:
            subs += [str(c) for c in action.choices]
    tree[path] = (subs, options)
    return tree


def completion_script(shell: str, parser: argparse.ArgumentParser) -> str:
    """bash (and zsh through its bashcompinit) completion of commands and options, from the parser tree."""
    tree = command_tree(parser)
    # keys: the command path from "freshctl" on (bash has no empty keys)
    words = "\n".join(f'    ["freshctl{" " + path if path else ""}"]="{" ".join(subs + options)}"'
                      for path, (subs, options) in sorted(tree.items()))
    nested = "\n".join(f'    ["freshctl{" " + path if path else ""}"]="{" ".join(subs)}"'
                       for path, (subs, _) in sorted(tree.items()) if subs)
    script = f"""# freshctl {__version__} completion for {shell}: source <(freshctl completion {shell})
declare -gA _freshctl_words=(
{words}
)
declare -gA _freshctl_subs=(
{nested}
)
_freshctl() {{
    local cur="${{COMP_WORDS[COMP_CWORD]}}" path=freshctl word i
    for ((i = 1; i < COMP_CWORD; i++)); do
        word="${{COMP_WORDS[i]}}"
        if [[ " ${{_freshctl_subs[$path]-}} " == *" $word "* ]]; then
            path="$path $word"
        fi
    done
    COMPREPLY=($(compgen -W "${{_freshctl_words[$path]-}}" -- "$cur"))
}}
complete -F _freshctl freshctl
"""
    if shell == "zsh":
        script = "autoload -U +X bashcompinit && bashcompinit\n" + script
    return script


def request_for(args: argparse.Namespace, parser: argparse.ArgumentParser) -> tuple[str, dict[str, Any]]:
    if args.command in ctl_twoway.GROUPS:
        return ctl_twoway.request_for(args, parser)
    match args.command:
        case "status":
            return "status", {}
        case "connections":
            action = args.action or "list"
            if action == "list":
                return "connections.list", {}
            if action == "remove":
                return "connections.remove", {"name": args.name, "purge": args.purge}
            if action == "show":
                return "connections.show", {"name": args.name}
            if action == "set-credential":
                try:
                    return "connections.set_credential", {"name": args.name,
                                                          "credentials": pairs(args.credential, "KEY=VALUE")}
                except argparse.ArgumentTypeError as exc:
                    parser.error(str(exc))
            try:
                credentials = pairs(args.credential, "--credential")
                options = {key: option_value(value) for key, value in pairs(args.option, "--option").items()}
            except argparse.ArgumentTypeError as exc:
                parser.error(str(exc))
            return "connections.add", {"name": args.name, "provider": args.provider, "base_url": args.base_url,
                                       "credentials": credentials, "tenant": args.tenant, "options": options,
                                       "check": args.check}
        case "sync":
            entities = [e.strip() for e in (args.entities or "").split(",") if e.strip()] or None
            if args.entities is not None and not entities:
                parser.error("--entities takes a comma-separated list of entity names")
            return "sync", {"name": args.name, "full": args.full, "force": args.force,
                            "confirm_deletes": args.confirm_deletes, "entities": entities, "since": args.since,
                            "dry_run": args.dry_run or None}
        case "consumers":
            action = args.action or "list"
            if action == "list":
                return "consumers.list", {}
            if action == "add":
                return "consumers.add", {"app": args.app, "tenant": args.tenant,
                                         "entities": split_list(args.entities, parser),
                                         "skip_history": args.skip_history}
            if action == "backfill":
                return "consumers.backfill", {"app": args.app, "since": args.since,
                                              "entities": split_list(args.entities, parser),
                                              "dry_run": args.dry_run}
            return f"consumers.{action}", {"app": args.app}
        case "tokens":
            if args.action == "add":
                return "tokens.add", {"tenant": args.tenant, "label": args.label}
            if args.action == "list":
                return "tokens.list", {"tenant": args.tenant}
            return "tokens.revoke", {"id": args.id}
        case "health" | "schedule" | "members":
            return args.command, {}
        case "ensure":
            return "ensure", {"name": args.name}
        case "stats":
            if args.days < 1:
                parser.error("--days must be 1 or more")
            return "stats", {"days": args.days, "connection": args.connection, "tenant": args.tenant}
        case "trigger":
            return "trigger", {"sweep": args.sweep}
        case "watch":
            if args.id is None and not args.all:
                parser.error("watch needs a job id or --all")
            return "watch", {"id": args.id, "all": args.all or None}
        case "jobs":
            return "jobs", {"connection": args.connection, "tenant": args.tenant, "status": args.status,
                            "limit": args.limit, "offset": args.offset}
        case _:
            return args.command, {"id": args.id}


split_list = ctl_twoway.split_list  # "a,b" -> ["a", "b"] (--entities)


def render(cmd: str, result: Any) -> str:
    if cmd.split(".", maxsplit=1)[0] in ctl_twoway.GROUPS:
        return ctl_twoway.render(cmd, result)
    if cmd.startswith("consumers."):
        return json.dumps(result, indent=2)  # small nested records: their JSON reads best
    match cmd:
        case "status":
            return show_status(result)
        case "connections.list":
            return show_status({"version": "", "api_version": API_VERSION, "started_at": None, "store": {"state": "up"},
                                **result}).split("\n\n", 1)[1]
        case "connections.show":
            return show_connection(result)
        case "connections.add":
            return f"added {result['connection']['name']}; initial sync queued as job {result['job_id']}"
        case "connections.remove":
            gone = result.get("purged") or {}
            return (f"removed {result['removed']}: purged {gone.get('records', 0)} records, "
                    f"{gone.get('cursors', 0)} cursors, {gone.get('jobs', 0)} jobs")
        case "connections.set_credential":
            return (f"credentials of {result['name']} updated ({', '.join(result['credential_keys'])}); "
                    f"sync queued as job {result['job_id']}")
        case "sync":  # the id alone (scripts: J=$(freshctl sync NAME)); "already running" goes to stderr
            return str(result["job_id"])
        case "ensure":
            if result["queued"] or result.get("job_id"):
                return (f"{result['job_id']} ({'queued' if result['queued'] else 'already live'}: "
                        f"{result['reason']})")
            return f"fresh: {result['reason']}"
        case "jobs":
            return show_jobs(result)
        case "members":
            return show_members(result)
        case "job":
            return show_job(result)
        case "health":
            syncs = result["syncs"]
            rate = "-" if syncs["success_rate"] is None else f"{100 * syncs['success_rate']:.1f}%"
            age = result["oldest_data_age_seconds"]
            lines = [f"{'healthy' if result['healthy'] else 'UNHEALTHY'}: store {result['store']}, "
                     f"scheduler {result['scheduler']}",
                     f"syncs: {syncs['total']} finished, {syncs['successful']} successful ({rate}), "
                     f"{syncs['active']} active",
                     "connections: " + (", ".join(f"{n} {s}" for s, n in sorted(result["connections"].items()))
                                        or "none"),
                     f"oldest data: {'-' if age is None else f'{age}s'}"]
            lines += [f"records: {name}: " + (", ".join(f"{e} {n}" for e, n in sorted(counts.items())) or "none")
                      for name, counts in sorted((result.get("records") or {}).items())]
            return "\n".join(lines + [f"  problem: {p}" for p in result["problems"]])
        case "stats":
            return show_stats(result)
        case "schedule":
            return table(["SWEEP", "SCHEDULE", "NEXT RUN", "RUNNING"],
                         [[w["id"], w["trigger"], ago(w["next_run_time"]), w["running"]] for w in result["sweeps"]])
        case "trigger":
            return f"sweep {result['sweep']} started"
        case "tokens.add":
            return str(result["token"])  # alone on stdout, for scripts; the note goes to stderr
        case "tokens.list":
            return table(["ID", "TENANT", "LABEL", "TOKEN", "CREATED", "LAST USED", "REVOKED"],
                         [[t["id"], t["tenant"], t["label"], t["prefix"] + "...", ago(t["created_at"]),
                           ago(t["last_used_at"]), ago(t["revoked_at"]) if t["revoked_at"] else ""]
                          for t in result["tokens"]])
        case "tokens.revoke":
            return f"token {result['id']} of tenant {result['tenant']} revoked"
        case "retry":
            return f"{result['job_id']} (retrying {result['items']} failed item(s) of job {result['retry_of']})"
        case _:
            return f"job {result['job_id']}: {result['requested']} requested"


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
