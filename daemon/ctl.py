"""freshctl: the thin admin client. Tables for people, --json for scripts.

Exit codes: 0 ok; 1 the daemon answered with an error; 2 bad arguments;
3 the daemon is not reachable.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from freshd.admin.protocol import API_VERSION
from freshd.paths import default_socket_path, untrusted_socket_dir

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3


class Unreachable(Exception):
    pass


class DaemonError(Exception):
    def __init__(self, code: str, message: str) -> None:
        self.code = code
        super().__init__(message)


def check_socket_dir(sock_path: Path) -> None:
    """Refuse a socket in a /tmp directory someone else made: what we send (credentials) would be theirs."""
    if (problem := untrusted_socket_dir(sock_path)) is not None:
        raise Unreachable(f"refusing to connect: {problem}")


def call(sock_path: Path, cmd: str, args: dict[str, Any], *, timeout: float) -> Any:
    request = json.dumps({"v": API_VERSION, "id": 1, "cmd": cmd, "args": args}).encode() + b"\n"
    check_socket_dir(sock_path)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(sock_path))
            sock.sendall(request)
            data = b""
            while not data.endswith(b"\n"):
                chunk = sock.recv(1 << 16)
                if not chunk:
                    break
                data += chunk
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        raise Unreachable(f"freshd is not running (no socket at {sock_path})") from exc
    except PermissionError as exc:
        raise Unreachable(f"permission denied on {sock_path}: are you in freshd's admin group?") from exc
    except TimeoutError as exc:
        raise DaemonError("timeout", f"no reply from freshd within {timeout:g} s") from exc
    if not data:
        raise Unreachable(f"freshd closed the connection at {sock_path}")
    reply = json.loads(data)
    if not reply.get("ok"):
        error = reply.get("error") or {}
        raise DaemonError(error.get("code", "internal"), error.get("message", "unknown error"))
    return reply["result"]


def stream(sock_path: Path, cmd: str, args: dict[str, Any], *, timeout: float) -> Iterator[Any]:
    """A subscription: yield each event until the daemon's final reply."""
    request = json.dumps({"v": API_VERSION, "id": 1, "cmd": cmd, "args": args}).encode() + b"\n"
    check_socket_dir(sock_path)
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        sock.connect(str(sock_path))
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        raise Unreachable(f"freshd is not running (no socket at {sock_path})") from exc
    with sock, sock.makefile("rb") as lines:
        sock.sendall(request)
        sock.settimeout(None)  # a watch lasts as long as the job
        for line in lines:
            frame = json.loads(line)
            if "event" in frame:
                yield frame["event"]
            elif not frame.get("ok"):
                error = frame.get("error") or {}
                raise DaemonError(error.get("code", "internal"), error.get("message", "unknown error"))
            else:
                return


def bar(fraction: float, width: int = 24) -> str:
    filled = round(max(0.0, min(1.0, fraction)) * width)
    return "[" + "#" * filled + "-" * (width - filled) + "]"


def watch_lines(job: dict[str, Any]) -> list[str]:
    eta = f" eta {job['eta_seconds']}s" if job.get("eta_seconds") is not None else ""
    lines = [f"job {job['id']} {job['connection']} {job['kind']} {job['status']}"
             + (f" {job['percent']}%" if job.get("percent") is not None else "") + eta]
    for entity, p in job["progress"].items():
        total = p.get("total")
        done = p["processed"] + p["failed"] + p["skipped"]
        fraction = done / total if total else (1.0 if job["status"] == "completed" else 0.0)
        lines.append(f"  {entity:14} {bar(fraction)} {done}/{total if total is not None else '?'}"
                     f"  {p.get('rate', 0):,.0f} rec/s" + (f"  {p['failed']} failed" if p["failed"] else ""))
    return lines


def run_watch(sock_path: Path, args: dict[str, Any], *, as_json: bool, timeout: float) -> None:
    tty = sys.stdout.isatty() and not as_json
    drawn: dict[int, list[str]] = {}
    height = 0
    for event in stream(sock_path, "watch", args, timeout=timeout):
        job = event["job"]
        if as_json:
            print(json.dumps(event), flush=True)
            continue
        drawn[job["id"]] = watch_lines(job)
        if tty:  # redraw the block in place
            block = [line for lines in drawn.values() for line in lines]
            sys.stdout.write("\x1b[F\x1b[K" * height + "\n".join(block) + "\n")
            height = len(block)
            sys.stdout.flush()
        else:
            print(drawn[job["id"]][0] + " | " + "; ".join(line.strip() for line in drawn[job["id"]][1:]),
                  flush=True)


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


def table(headers: list[str], rows: list[list[Any]]) -> str:
    cells = [[("-" if v is None else str(v)) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    return "\n".join(lines)


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
    return head + "\n\n" + table(["NAME", "PROVIDER", "TENANT", "STATE", "BREAKER", "RECORDS", "LAST SUCCESS",
                                  "NEXT SYNC", "ERROR"], rows)


def show_members(result: list[dict[str, Any]]) -> str:
    rows = [("MEMBER", "HOST", "PID", "ALIVE", "CONNECTIONS", "STARTED")]
    for m in result:
        rows.append((m["id"] + (" (this one)" if m.get("self") else ""), m["host"], str(m["pid"]),
                     "yes" if m["alive"] else "no", str(m["connections"]), m["started_at"] or "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows)


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
    out = [f"{k:16} {c.get(k)}" for k in keys if k in c]
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="freshctl", description="Control a running freshd.")
    parser.add_argument("--socket", type=Path, default=None, help="admin socket (default: $FRESHD_SOCKET or "
                                                                   f"{default_socket_path()})")
    parser.add_argument("--json", action="store_true", help="print the daemon's JSON reply")
    parser.add_argument("--timeout", type=float, default=30.0)
    # `--json` may also follow the command (`freshctl status --json`); SUPPRESS keeps the global value
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print the daemon's JSON")
    sub = parser.add_subparsers(dest="command", required=True)
    add_parser = sub.add_parser

    def sub_add_parser(name: str, **kwargs: Any) -> argparse.ArgumentParser:
        return add_parser(name, parents=[common], **kwargs)

    sub.add_parser = sub_add_parser  # type: ignore[method-assign]
    sub.add_parser("status", help="the daemon and its connections")
    conns = sub.add_parser("connections", help="list, show, add, remove connections")
    csub = conns.add_subparsers(dest="action")
    add_connection_parser = csub.add_parser
    csub.add_parser = lambda name, **kw: add_connection_parser(name, parents=[common], **kw)  # type: ignore[method-assign]
    csub.add_parser("list")
    csub.add_parser("show").add_argument("name")
    add = csub.add_parser("add")
    add.add_argument("name")
    add.add_argument("--provider", required=True)
    add.add_argument("--base-url", required=True)
    add.add_argument("--credential", action="append", metavar="KEY=VALUE", required=True)
    add.add_argument("--tenant", default=None)
    add.add_argument("--option", action="append", metavar="KEY=VALUE",
                     help="a provider option; VALUE is read as JSON if it is JSON (5, true, [..], {..}), else as text")
    add.add_argument("--check", action=argparse.BooleanOptionalAction, default=True,
                     help="probe the provider with these credentials first and store nothing if it refuses them "
                          "or cannot be reached (default: on; --no-check skips it)")
    remove = csub.add_parser("remove", help="delete a connection and all its data (needs --purge)")
    remove.add_argument("name")
    remove.add_argument("--purge", action="store_true",
                        help="yes, delete its records, cursors and jobs (a detached or disabled connection's too)")
    setcred = csub.add_parser("set-credential", help="new credential values (re-authentication); KEY= removes one")
    setcred.add_argument("name")
    setcred.add_argument("credential", nargs="+", metavar="KEY=VALUE")
    sync = sub.add_parser("sync", help="queue a sync (prints the job id)")
    sync.add_argument("name")
    sync.add_argument("--full", action="store_true")
    sync.add_argument("--force", action="store_true")
    sync.add_argument("--confirm-deletes", action="store_true",
                      help="with --full: apply deletions held for being over [sync] max_delete_share "
                           "(see `connections show`), once this listing is complete")
    sync.add_argument("--entities", metavar="A,B", help="sync only these entities (comma-separated)")
    sync.add_argument("--since", metavar="DATE", help="re-read from this date or time (ISO 8601, UTC unless "
                                                      "it says otherwise); other cursors are left as they are")
    sync.add_argument("--dry-run", action="store_true",
                      help="fetch and count what would be created, changed and deleted; write nothing")
    jobs = sub.add_parser("jobs", help="job history")
    jobs.add_argument("--connection")
    jobs.add_argument("--tenant")
    jobs.add_argument("--status", help="queued, running, paused, completed, partial, failed, cancelled, interrupted")
    jobs.add_argument("--limit", type=int, default=50)
    jobs.add_argument("--offset", type=int, default=0)
    sub.add_parser("ensure", help="queue a sync if the data is missing or stale (else say how old it is)"
                   ).add_argument("name")
    stats = sub.add_parser("stats", help="daily statistics per connection (computed by the cleanup sweep)")
    stats.add_argument("--days", type=int, default=7, help="the last N days (default 7)")
    stats.add_argument("--connection")
    stats.add_argument("--tenant")
    sub.add_parser("health", help="health figures; exit 0 when healthy, 1 otherwise")
    sub.add_parser("members", help="the daemons sharing this database and the connections each runs")
    sub.add_parser("schedule", help="the periodic sweeps and their next run")
    sub.add_parser("trigger", help="run a sweep now").add_argument("sweep")
    watch = sub.add_parser("watch", help="live progress of a job (or --all), streamed by the daemon")
    watch.add_argument("id", type=int, nargs="?")
    watch.add_argument("--all", action="store_true")
    for name, text in (("job", "one job"), ("pause", "pause a job at the next page boundary"),
                       ("resume", "resume a paused job"), ("cancel", "cancel a job (keeps what was committed)"),
                       ("retry", "fetch again, by id, the items a job recorded as failed")):
        sub.add_parser(name, help=text).add_argument("id", type=int)
    return parser


def request_for(args: argparse.Namespace, parser: argparse.ArgumentParser) -> tuple[str, dict[str, Any]]:
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


def render(cmd: str, result: Any) -> str:
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
        case "sync":
            return str(result["job_id"]) + ("" if result["created"] else f" (already {result['status']})")
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
        case "retry":
            return f"{result['job_id']} (retrying {result['items']} failed item(s) of job {result['retry_of']})"
        case _:
            return f"job {result['job_id']}: {result['requested']} requested"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    cmd, request_args = request_for(args, parser)
    request_args = {k: v for k, v in request_args.items() if v is not None}
    sock_path = args.socket or default_socket_path()
    try:
        if cmd == "watch":
            run_watch(sock_path, request_args, as_json=args.json, timeout=args.timeout)
            return EXIT_OK
        result = call(sock_path, cmd, request_args, timeout=args.timeout)
    except Unreachable as exc:
        print(f"freshctl: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except DaemonError as exc:
        print(f"freshctl: {exc}", file=sys.stderr)
        return EXIT_ERROR
    print(json.dumps(result, indent=2) if args.json else render(cmd, result))
    if cmd == "health" and not result["healthy"]:
        return EXIT_ERROR  # for scripts and monitoring: the figures above say why
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
