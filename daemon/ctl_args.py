"""freshctl's command line: the arguments each command takes, the request it sends, shell completion.

`build_parser` declares every command (the two-way ones come from freshd.ctl_twoway), with a usage
error printed as JSON under --json (`Parser`); `request_for` turns parsed arguments into the
admin command and its arguments; `completion_script` writes a bash or zsh completion from the
parser tree, so it never falls behind the commands.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from freshd import __version__, ctl_twoway
from freshd.admin.protocol import API_VERSION
from freshd.ctl_exit import EXIT_TABLE, EXIT_USAGE
from freshd.paths import default_socket_path


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


# --- requests ----------------------------------------------------------------------------------------


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

