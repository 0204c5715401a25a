"""freshctl's two-way sync commands: `pairs`, `twoway`, `conflicts` (docs/TWO-WAY.md).

Parsing (`add_commands`), the request each command sends (`request_for`) and how a reply reads in
a terminal (`render`); `--json` prints the daemon's reply as is.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

Command = Callable[..., argparse.ArgumentParser]
GROUPS = ("pairs", "twoway", "conflicts")


def add_commands(sub: Any, command: Command) -> None:
    pairs = command(sub, "pairs", "pairs of connections kept in agreement by two-way sync",
                    "freshctl pairs list", "freshctl pairs add shop-erp --left shop --right erp")
    psub = pairs.add_subparsers(dest="action", metavar="ACTION")
    command(psub, "list", "the pairs, their entities and how many records each links", "freshctl pairs list")
    padd = command(psub, "add", "declare a pair with the shipped mappings (WooCommerce and Odoo)",
                   "freshctl pairs add shop-erp --left shop --right erp --entities customers,products")
    padd.add_argument("name", help="a name for the pair")
    padd.add_argument("--left", required=True, help="the left connection's name; e.g. --left shop")
    padd.add_argument("--right", required=True, help="the right connection's name; e.g. --right erp")
    padd.add_argument("--entities", metavar="A,B", help="these shipped mappings (default: all of them)")

    tw = command(sub, "twoway", "two-way runs: start, follow, pause, resume, cancel",
                 "R=$(freshctl twoway start shop-erp)", "freshctl twoway status 7")
    tsub = tw.add_subparsers(dest="action", required=True, metavar="ACTION")
    start = command(tsub, "start", "queue a run; prints its id alone",
                    "freshctl twoway start shop-erp --entities customers --batch-size 100",
                    "freshctl twoway start shop-erp --dry-run")
    start.add_argument("pair", help="the pair's name")
    start.add_argument("--entities", metavar="A,B", help="only these entities; e.g. --entities customers")
    start.add_argument("--batch-size", type=int, metavar="N", help="items per batch, 1 to 200 (default 50)")
    start.add_argument("--batch-delay", type=int, metavar="SECONDS", help="a pause between batches (default 0)")
    start.add_argument("--dry-run", action="store_true",
                       help="plan only: creates, updates and conflicts per entity; nothing is written")
    runs = command(tsub, "runs", "runs, newest first", "freshctl twoway runs --pair shop-erp")
    runs.add_argument("--pair", help="only this pair's runs")
    for name, text in (("status", "a run: state, percent, ETA, queue, conflicts, writes"),
                       ("pause", "pause at the next batch boundary"), ("resume", "resume a paused run"),
                       ("cancel", "cancel at the next batch boundary (what was written stays)"),
                       ("log", "the run's provider writes (the idempotency log) and activity")):
        command(tsub, name, text, f"freshctl twoway {name} 7").add_argument("id", type=int, help="the run's id")

    conflicts = command(sub, "conflicts", "what two-way runs could not settle by themselves",
                        "freshctl conflicts --unresolved", "freshctl conflicts resolve 12 --take left")
    conflicts.add_argument("--pair", help="only this pair's")
    conflicts.add_argument("--type", help="DataMismatch, DuplicateKey, ValidationError, AuthError or RetryExhausted")
    conflicts.add_argument("--unresolved", action="store_true", help="only those waiting for a person")
    csub = conflicts.add_subparsers(dest="action", metavar="ACTION")
    command(csub, "show", "one conflict: base, left, right, message", "freshctl conflicts show 12").add_argument(
        "id", type=int, help="the conflict's id")
    resolve = command(csub, "resolve", "write the chosen values to the side(s) that differ, and close it",
                      "freshctl conflicts resolve 12 --take right",
                      "freshctl conflicts resolve 12 --value 'city=\"Ghent\"'")
    resolve.add_argument("id", type=int, help="the conflict's id")
    resolve.add_argument("--take", choices=["left", "right"], help="keep this side's values")
    resolve.add_argument("--value", action="append", metavar="FIELD=JSON",
                         help="the merged value of a field, as JSON (repeat per field); e.g. --value 'phone=\"+32 1\"'")


def split_list(text: str | None, parser: argparse.ArgumentParser) -> list[str] | None:
    """--entities a,b: the names; an empty list is a usage error."""
    if text is None:
        return None
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        parser.error("--entities takes a comma-separated list of entity names")
    return items


def _values(items: list[str] | None, parser: argparse.ArgumentParser) -> dict[str, Any] | None:
    if not items:
        return None
    out: dict[str, Any] = {}
    for item in items:
        name, sep, raw = item.partition("=")
        if not sep or not name:
            parser.error(f"--value takes FIELD=JSON, got {item!r}")
        try:
            out[name] = json.loads(raw)
        except ValueError:
            parser.error(f"--value {name}: {raw!r} is not JSON (a text needs quotes: {name}='\"...\"')")
    return out


def request_for(args: argparse.Namespace, parser: argparse.ArgumentParser) -> tuple[str, dict[str, Any]]:
    action = getattr(args, "action", None)
    if args.command == "pairs":
        if action == "add":
            return "pairs.add", {"name": args.name, "left": args.left, "right": args.right,
                                 "entities": split_list(args.entities, parser)}
        return "pairs.list", {}
    if args.command == "twoway":
        if action == "start":
            if args.batch_size is not None and not 1 <= args.batch_size <= 200:
                parser.error("--batch-size must be 1 to 200")
            return "twoway.start", {"pair": args.pair, "entities": split_list(args.entities, parser),
                                    "batch_size": args.batch_size, "batch_delay": args.batch_delay,
                                    "dry_run": args.dry_run or None}
        if action == "runs":
            return "twoway.runs", {"pair": args.pair}
        return f"twoway.{action}", {"id": args.id}
    if action == "show":
        return "conflicts.show", {"id": args.id}
    if action == "resolve":
        values = _values(args.value, parser)
        if args.take is None and not values:
            parser.error("resolve needs --take left|right or --value FIELD=JSON")
        return "conflicts.resolve", {"id": args.id, "take": args.take, "values": values}
    return "conflicts.list", {"pair": args.pair, "type": args.type, "unresolved": args.unresolved or None}


def _run_line(run: dict[str, Any]) -> str:
    queue, conflicts = run["queue"], run["conflicts"]
    eta = "" if run["eta_seconds"] in (None, 0) else f", ETA {run['eta_seconds']:.0f}s"
    return (f"run {run['id']} of {run['pair']}: {run['state']}"
            + (f" ({run['phase']})" if run["state"] == "processing" and run["phase"] else "")
            + f", {run['percent']:.0f}%{eta}; items {queue['processed']}/{queue['total']} "
            f"(failed {queue['failed']}, skipped {queue['skipped']}, pending {queue['pending']}); "
            f"conflicts {conflicts['unresolved']} unresolved of {conflicts['total']}; "
            f"writes left {run['writes'].get('left', 0)}, right {run['writes'].get('right', 0)}"
            + (f"; error: {run['error']}" if run["error"] else ""))


def render(cmd: str, result: Any) -> str:
    if cmd == "twoway.start":
        return str(result["id"])  # alone, for scripts: R=$(freshctl twoway start PAIR)
    if cmd in ("twoway.status", "twoway.pause", "twoway.resume", "twoway.cancel"):
        lines = [_run_line(result)]
        if result["plan"]:
            lines += [f"  plan {entity}: " + ", ".join(f"{k} {v}" for k, v in counts.items() if v)
                      for entity, counts in result["plan"].items()]
        return "\n".join(lines)
    if cmd == "twoway.runs":
        return "\n".join(_run_line(run) for run in result) or "no runs"
    if cmd == "pairs.list":
        return "\n".join(f"{p['name']}: {p['left']} ({p['left_provider']}) <-> {p['right']} ({p['right_provider']})"
                         f", {', '.join(p['entities'])}; {p['links']} linked; {p['source']}" for p in result) \
            or "no pairs"
    if cmd == "pairs.add":
        return f"pair {result['name']}: {result['left']} <-> {result['right']} ({', '.join(result['entities'])})"
    if cmd == "conflicts.list":
        return "\n".join(f"{c['id']} {c['type']} {c['entity']} left {c['left_id']} right {c['right_id']} "
                         f"[{', '.join(c['fields'])}] {c['status']}" + (f": {c['message']}" if c["message"] else "")
                         for c in result) or "no conflicts"
    return json.dumps(result, indent=2)  # conflicts show/resolve, twoway log: nested records
