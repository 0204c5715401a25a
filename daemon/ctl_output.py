"""How freshctl's output reads: plain text for scripts, rich tables and live progress in a terminal.

`STYLE` says which (rich when stdout is a terminal and --json is off); `table` aligns columns
(numbers to the right) or fits them to the terminal; `ago`, `due`, `duration` and `human` show
times and values as people read them; the `show_*` functions and `render` turn each command's
reply into text (the two-way commands' through freshd.ctl_twoway); `watch_lines` and `watch_view`
show a job's progress, per entity, with its rate and ETA.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import textwrap
from datetime import UTC, datetime
from typing import Any

from freshd import ctl_twoway
from freshd.admin.protocol import API_VERSION


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

