"""`freshctl` as people and scripts meet it (issue 15 parts 1-3): checked connections, exit codes and
JSON errors for scripts, quiet ends in a terminal, completion."""

from __future__ import annotations

import argparse
import fcntl
import functools
import json
import os
import pty
import re
import signal
import struct
import subprocess
import sys
import termios
from pathlib import Path
from typing import Any

import pytest
import trio

from freshd import __version__, ctl
from freshd.config import load_config
from freshd.connectors import base, registry
from freshd.connectors.base import (
    ConnectionSettings,
    Connector,
    Page,
    StreamSpec,
    SyncContext,
    SyncMode,
    check_settings,
)
from freshd.connectors.simulator import serve_asgi
from freshd.connectors.woocommerce.simulator import WooCommerceSimulator
from freshd.ctl_args import build_parser, completion_script
from freshd.ctl_exit import EXIT_TABLE
from freshd.errors import ConfigError, ConfigErrors
from tests.helpers import query
from tests.test_daemon import CREDS, FRESHCTL, connection_block, start_daemon

UNREACHABLE = "http://127.0.0.1:9"  # the discard port: nothing listens there


async def woo(nursery: trio.Nursery) -> tuple[WooCommerceSimulator, str]:
    sim = WooCommerceSimulator(records=20, seed=7, credentials=CREDS)
    port = await nursery.start(functools.partial(serve_asgi, sim.app, host="127.0.0.1", port=0))
    return sim, f"http://127.0.0.1:{port}"


async def run(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, **kwargs}
    return await trio.to_thread.run_sync(functools.partial(subprocess.run, command, text=True, timeout=30, **pipes))


def add_args(name: str, url: str, *extra: str, secret: str = CREDS["consumer_secret"]) -> list[str]:
    return ["connections", "add", name, "--provider", "woocommerce", "--base-url", url,
            "--credential", f"consumer_key={CREDS['consumer_key']}", "--credential", f"consumer_secret={secret}",
            *extra]


# --- 1. a connection is checked before it is accepted ----------------------------------------------


def test_check_settings_reports_every_problem_at_once() -> None:
    settings = ConnectionSettings("shop", "woocommerce", "http://x", credentials={"consumer_key": "k"},
                                  options={"page_concurrency": "abc", "rate_limit": "lots", "auth": "magic"})
    with pytest.raises(ConfigErrors) as caught:
        check_settings(settings)
    text = str(caught.value)
    assert text.startswith("4 problems: ") and "\n" not in text
    for fragment in ("missing credential(s): consumer_secret", "page_concurrency", "rate", "option auth"):
        assert fragment in text, text
    # one problem stays a plain ConfigError naming its key
    with pytest.raises(ConfigError) as one:
        check_settings(ConnectionSettings("p", "powens", "http://x"))
    assert not isinstance(one.value, ConfigErrors) and one.value.where == "credentials"
    assert "missing credential(s): access_token" in str(one.value)


def test_every_connector_declares_its_required_credentials() -> None:
    for provider in base.providers():
        cls = base.connector_class(provider)
        assert "required_credentials" in vars(cls), provider
    assert base.connector_class("amazon_sp").required_credentials == ("refresh_token", "client_id", "client_secret")
    with pytest.raises(ConfigError, match=r"api_key \(or password\)"):
        check_settings(ConnectionSettings("erp", "odoo", "http://x", options={"database": "d", "username": "u"}))


def test_config_load_reports_every_problem_of_a_connection_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "freshd.toml"
    path.write_text('[[connections]]\nname = "shop"\nprovider = "woocommerce"\nbase_url = "http://x"\n'
                    'credentials = { consumer_key = "k" }\noptions = { page_concurrency = 99, rate_limit = "lots" }\n')
    with pytest.raises(ConfigErrors) as caught:
        load_config(path, env={})
    text = str(caught.value)
    assert "\n" not in text and "consumer_secret" in text and "page_concurrency" in text and "rate" in text


async def test_freshd_with_an_invalid_config_says_so_in_one_line_without_a_traceback(tmp_path: Path) -> None:
    path = tmp_path / "freshd.toml"
    path.write_text('[[connections]]\nname = "shop"\nprovider = "woocommerce"\nbase_url = "http://x"\n'
                    'credentials = { consumer_key = "k" }\noptions = { page_concurrency = 99 }\n')
    with trio.fail_after(30):
        result = await run([sys.executable, "-m", "freshd", "run", "--config", str(path)])
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "invalid configuration" in lines[0] and "consumer_secret" in lines[0] and "page_concurrency" in lines[0]


async def test_connections_add_reports_every_problem_at_once_and_stores_nothing(
    nursery: trio.Nursery, tmp_path: Path, database_url: str,
) -> None:
    with trio.fail_after(60):
        running = await start_daemon(nursery, tmp_path, database_url, "")
        result = await running.ctl("connections", "add", "shop", "--provider", "woocommerce", "--base-url",
                                   "ftp://nowhere", "--credential", "consumer_key=k", "--option",
                                   "page_concurrency=abc", "--option", "rate_limit=lots", check=False)
        assert result.returncode == 1, result
        message = result.stderr.strip()
        assert message.count("\n") == 0 and message.startswith("freshctl: 4 problems: "), message
        for fragment in ("base_url", "consumer_secret", "page_concurrency", "rate"):
            assert fragment in message, message
        assert query(database_url, "SELECT count(*) FROM connections") == [(0,)]


async def test_connections_add_checks_the_credentials_with_the_provider_and_stores_nothing_if_refused(
    nursery: trio.Nursery, tmp_path: Path, database_url: str,
) -> None:
    with trio.fail_after(60):
        sim, url = await woo(nursery)
        running = await start_daemon(nursery, tmp_path, database_url, "")
        refused = await running.ctl(*add_args("shop", url, secret="cs_wrong_0123456789"), check=False)
        assert refused.returncode == 1 and "refused the credentials" in refused.stderr, refused
        assert "cs_wrong_0123456789" not in refused.stderr  # secrets are scrubbed from the reason
        unreachable = await running.ctl(*add_args("shop", UNREACHABLE), check=False)
        assert unreachable.returncode == 7 and "cannot be used" in unreachable.stderr, unreachable
        assert "--no-check" in unreachable.stderr
        assert query(database_url, "SELECT count(*) FROM connections") == [(0,)]
        # --no-check stores it unchecked; good credentials pass the check
        assert (await running.ctl(*add_args("later", UNREACHABLE, "--no-check"))).returncode == 0
        served = sim.app.stats.total()
        added = await running.ctl_json(*add_args("shop", url))
        assert sim.app.stats.total() > served  # the probe went to the provider
        assert (await running.wait_job(added["job_id"]))["status"] == "completed"


class _FlakyCredentialsConnector(Connector):
    """A bug that only bad credentials trigger: the actor crashes (not a provider error) and backs off."""

    provider = "flaky"
    required_credentials = ("key",)
    streams = (StreamSpec("things", "things"),)

    async def sync_entity(self, stream: StreamSpec, state: dict[str, Any] | None, mode: SyncMode,
                          ctx: SyncContext) -> None:
        if self.settings.credentials["key"] == "bad":
            raise RuntimeError("bug triggered by bad credentials")
        await ctx.emit(Page("things", [{"id": 1}], {"done": True}))


async def test_set_credential_restarts_a_crash_looping_actor_at_once(
    nursery: trio.Nursery, tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(registry.registered(), "flaky", registry.Provider(
        "flaky", connector=f"{__name__}:_FlakyCredentialsConnector",
        simulator="freshd.connectors.woocommerce.simulator:WooCommerceSimulator", doc=""))
    monkeypatch.setattr("freshd.supervisor.BACKOFF_START", 60.0)  # a backoff this test could never wait out
    with trio.fail_after(30):
        running = await start_daemon(nursery, tmp_path, database_url, "")
        await running.ctl("connections", "add", "lab", "--provider", "flaky", "--base-url", UNREACHABLE,
                          "--credential", "key=bad")
        while (await running.ctl_json("connections", "show", "lab"))["state"] != "restarting":
            await trio.sleep(0.05)
        fixed = await running.ctl_json("connections", "set-credential", "lab", "key=good")
    with trio.fail_after(10):  # well within the 30-60 s backoff
        job = await running.wait_job(fixed["job_id"])
    assert job["status"] == "completed", job


async def test_set_credential_syncs_a_reauth_required_connection_at_once(
    nursery: trio.Nursery, tmp_path: Path, database_url: str,
) -> None:
    with trio.fail_after(60):
        _, url = await woo(nursery)
        running = await start_daemon(nursery, tmp_path, database_url, "")
        added = await running.ctl_json(*add_args("shop", url, "--no-check", secret="cs_wrong_0123456789"))
        assert (await running.wait_job(added["job_id"]))["status"] == "failed"
        while (await running.ctl_json("connections", "show", "shop"))["state"] != "reauth_required":
            await trio.sleep(0.05)
        fixed = await running.ctl_json("connections", "set-credential", "shop",
                                       f"consumer_secret={CREDS['consumer_secret']}")
    with trio.fail_after(10):
        assert (await running.wait_job(fixed["job_id"]))["status"] == "completed"


# --- 2. freshctl is safe for scripts -----------------------------------------------------------------


def ctl_command(running: Any, *args: str) -> list[str]:
    return [*FRESHCTL, "--socket", str(running.socket), *args]


async def test_sync_prints_the_job_id_alone_also_when_a_job_is_already_running(
    nursery: trio.Nursery, tmp_path: Path, database_url: str,
) -> None:
    with trio.fail_after(60):
        sim, url = await woo(nursery)
        sim.app.faults.latency = 0.5  # the initial sync is still running when we ask again
        running = await start_daemon(nursery, tmp_path, database_url, connection_block("shop", url)
                                     + "options = { page_concurrency = 1 }\n")
        initial = (await running.ctl_json("jobs"))["jobs"][0]["id"]
        while (await running.ctl_json("job", str(initial)))["status"] != "running":
            await trio.sleep(0.05)
        again = await running.ctl("sync", "shop")
        assert again.stdout == f"{initial}\n" and "already running" in again.stderr, again
        sim.app.faults.latency = 0
        await running.wait_job(initial)
        fresh = await running.ctl("sync", "shop", "--full")
        assert fresh.stdout.strip().isdigit() and int(fresh.stdout) > initial and fresh.stderr == ""
        await running.wait_job(int(fresh.stdout))


async def test_errors_under_json_are_json_on_stdout_and_exit_codes_follow_the_error_codes(
    nursery: trio.Nursery, tmp_path: Path, database_url: str,
) -> None:
    with trio.fail_after(60):
        running = await start_daemon(nursery, tmp_path, database_url, "")

        async def error(*args: str) -> tuple[int, dict[str, Any]]:
            result = await running.ctl(*args, check=False)
            return result.returncode, json.loads(result.stdout)["error"]

        status, err = await error("--json", "sync", "ghost")
        assert status == 4 and err["code"] == "not_found" and "ghost" in err["message"]
        status, err = await error("job", "999", "--json")  # --json after the command too
        assert status == 4 and err["code"] == "not_found"
        status, err = await error("--json", "jobs", "--status", "sleeping")
        assert status == 1 and err["code"] == "bad_request"
        status, err = await error("--json", "jobs", "--limit", "lots")
        assert status == 2 and err["code"] == "usage"
        gone = await run([*FRESHCTL, "--socket", str(tmp_path / "nowhere.sock"), "--json", "status"])
        assert gone.returncode == 3 and json.loads(gone.stdout)["error"]["code"] == "unreachable"
        plain = await run([*FRESHCTL, "--socket", str(tmp_path / "nowhere.sock"), "status"])
        assert plain.returncode == 3 and plain.stdout == "" and plain.stderr.startswith("freshctl: ")
        # the table maps every code the protocol has that a script may act on
        from freshd.ctl_exit import EXIT_CODES
        assert {c: EXIT_CODES[c] for c in ("not_found", "conflict", "forbidden", "timeout", "unavailable")} == \
            {"not_found": 4, "conflict": 5, "forbidden": 6, "timeout": 7, "unavailable": 7}


async def test_watch_exits_1_when_the_job_ends_failed(
    nursery: trio.Nursery, tmp_path: Path, database_url: str,
) -> None:
    with trio.fail_after(60):
        running = await start_daemon(nursery, tmp_path, database_url, "")
        added = await running.ctl_json(*add_args("shop", UNREACHABLE, "--no-check"))
        assert (await running.wait_job(added["job_id"]))["status"] == "failed"
        watched = await running.ctl("watch", str(added["job_id"]), check=False)
        assert watched.returncode == 1 and "failed" in watched.stdout
        streamed = await running.ctl("--json", "watch", str(added["job_id"]), check=False)
        assert streamed.returncode == 1 and json.loads(streamed.stdout.splitlines()[-1])["job"]["status"] == "failed"


def test_the_exit_status_table_is_in_the_readme_and_the_help() -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    helped = build_parser().format_help()
    for line in EXIT_TABLE.splitlines()[1:]:
        code = line.split()[0]
        assert f"| {code} " in readme, code
        assert line in helped, line


# --- 3. freshctl is solid in a terminal -------------------------------------------------------------


async def test_ctrl_c_ends_watch_quietly_with_130(
    nursery: trio.Nursery, tmp_path: Path, database_url: str,
) -> None:
    with trio.fail_after(60):
        running = await start_daemon(nursery, tmp_path, database_url, "")
        process = await trio.lowlevel.open_process(ctl_command(running, "watch", "--all"),
                                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        await trio.sleep(1.0)  # connected and waiting for events
        process.send_signal(signal.SIGINT)
        assert await process.wait() == 130
        assert process.stderr is not None
        err = await process.stderr.receive_some(65536)
        assert b"Traceback" not in err and b"KeyboardInterrupt" not in err, err


async def test_a_closed_pipe_ends_quietly(nursery: trio.Nursery, tmp_path: Path, database_url: str) -> None:
    with trio.fail_after(60):
        running = await start_daemon(nursery, tmp_path, database_url, "")
        read_end, write_end = os.pipe()
        os.close(read_end)  # like `| head` that has read its lines: nobody reads any more
        try:
            result = await run(ctl_command(running, "status"), stdout=write_end)
        finally:
            os.close(write_end)
        assert result.returncode == 141 and result.stderr == "", result.stderr


def test_tables_fit_the_terminal_and_right_align_numbers(monkeypatch: pytest.MonkeyPatch) -> None:
    rows = [["shop", 5, "x" * 200], ["warehouse-eu", 12_345, None]]
    plain = ctl.table(["NAME", "RECORDS", "ERROR"], rows).splitlines()
    assert plain[1].index("5") == plain[2].index("12345") + 4  # right-aligned in plain text too
    monkeypatch.setattr(ctl.STYLE, "rich", True)
    monkeypatch.setenv("COLUMNS", "60")
    monkeypatch.setenv("NO_COLOR", "1")
    fitted = [strip_ansi(line) for line in ctl.table(["NAME", "RECORDS", "ERROR"], rows).splitlines()]
    assert all(len(line) <= 60 for line in fitted), fitted
    numbers = [line for line in fitted if "12345" in line or " 5 " in line]
    assert len(numbers) == 2 and len({line.index("5", 14) for line in numbers}) == 1  # same right edge


async def test_tables_in_a_terminal_fit_its_width(
    nursery: trio.Nursery, tmp_path: Path, database_url: str,
) -> None:
    with trio.fail_after(60):
        _, url = await woo(nursery)
        running = await start_daemon(nursery, tmp_path, database_url, connection_block("a-rather-long-shop-name", url))
        await running.wait_job((await running.ctl_json("jobs"))["jobs"][0]["id"])
        narrow = await trio.to_thread.run_sync(in_terminal, ctl_command(running, "status"), 60)
        wide = await trio.to_thread.run_sync(in_terminal, ctl_command(running, "status"), 140)
    lines = [strip_ansi(line) for line in narrow.splitlines()]
    assert all(len(line) <= 60 for line in lines) and "RECORDS" in narrow, lines  # cells wrap, headers whole
    assert any("a-rather-long-shop-name" in strip_ansi(line) and "woocommerce" in line
               for line in wide.splitlines()), wide  # one line a row when there is room
    assert "Traceback" not in narrow + wide


def test_connections_show_prints_human_values() -> None:
    shown = ctl.show_connection({"name": "shop", "provider": "woocommerce", "error": None, "rate_limit": None,
                                 "credential_keys": ["consumer_key", "consumer_secret"], "records": 1234,
                                 "options": {"page_concurrency": 2, "entities": ["customers", "orders"]},
                                 "last_success_at": None, "health": "ok", "held_deletions": []})
    assert "None" not in shown and "[" not in shown and "'" not in shown, shown
    assert "consumer_key, consumer_secret" in shown and "page_concurrency=2, entities=customers,orders" in shown
    assert "1,234" in shown
    assert any(line.split() == ["error", "-"] for line in shown.splitlines())


def test_watch_shows_eta_and_rate_and_hides_rates_while_paused() -> None:
    job = {"id": 3, "connection": "shop", "kind": "full", "status": "running", "percent": 40.0, "eta_seconds": 65,
           "progress": {"customers": {"total": 100, "processed": 40, "failed": 0, "skipped": 0, "rate": 12.5}}}
    running = ctl.watch_lines(job)
    assert "eta 1m05s" in running[0] and "rec/s" in running[0] and "12 rec/s" in running[1], running
    paused = ctl.watch_lines({**job, "status": "paused", "eta_seconds": None})
    assert not any("rec/s" in line or "eta" in line for line in paused), paused
    ctl.STYLE.rich = True
    try:
        view = ctl.rendered(ctl.watch_view({3: job}))
        assert "eta 1m05s" in view and "40/100" in view and "rec/s" in view
        assert "rec/s" not in ctl.rendered(ctl.watch_view({3: {**job, "status": "paused"}}))
    finally:
        ctl.STYLE.rich = False


async def test_version_and_python_m_freshd() -> None:
    with trio.fail_after(30):
        version = await run([*FRESHCTL, "--version"])
        assert version.returncode == 0 and version.stdout.strip() == f"freshctl {__version__} (admin API 1)"
        freshd = await run([sys.executable, "-m", "freshd", "--help"])
    assert freshd.returncode == 0 and "run" in freshd.stdout and "migrate" in freshd.stdout


def test_every_command_and_option_has_help_and_an_example() -> None:
    def walk(parser: argparse.ArgumentParser, path: str) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, child in action.choices.items():
                    assert child.epilog and "example" in child.epilog and "freshctl" in child.epilog, \
                        f"{path} {name}"
                    walk(child, f"{path} {name}")
            elif not isinstance(action, argparse._HelpAction):
                assert action.help, f"{path} {action.option_strings or action.dest}"

    parser = build_parser()
    assert parser.epilog and "example" in parser.epilog
    walk(parser, "freshctl")


async def test_completion_scripts_complete_commands_and_options() -> None:
    script = completion_script("bash", build_parser())

    def complete(*words: str) -> list[str]:
        line = " ".join(words)
        result = subprocess.run(
            ["bash", "-c", f'{script}\nCOMP_WORDS=({line}); COMP_CWORD={len(words) - 1}; _freshctl; '
                           'echo "${COMPREPLY[@]}"'], capture_output=True, text=True, timeout=10, check=True)
        assert result.stderr == "", result.stderr
        return result.stdout.split()

    with trio.fail_after(30):
        assert complete("freshctl", "conn") == ["connections"]
        assert complete("freshctl", "--json", "connections", "set") == ["set-credential"]
        assert complete("freshctl", "connections", "add", "shop", "--no") == ["--no-check"]
        assert set(complete("freshctl", "sync", "shop", "--f")) == {"--full", "--force"}
        assert complete("freshctl", "completion", "z") == ["zsh"]
        zsh = await run([*FRESHCTL, "completion", "zsh"])
    assert zsh.returncode == 0 and zsh.stdout.startswith("autoload -U +X bashcompinit && bashcompinit\n")
    assert "complete -F _freshctl freshctl" in zsh.stdout


def strip_ansi(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)


def in_terminal(command: list[str], columns: int) -> str:
    """Run `command` with a pseudo-terminal `columns` wide as its stdout; what it printed."""
    primary, secondary = pty.openpty()
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    try:
        process = subprocess.Popen(command, stdout=secondary, stderr=secondary, env={**env, "TERM": "xterm"})
        os.close(secondary)
        chunks = []
        while True:
            try:
                chunk = os.read(primary, 65536)
            except OSError:  # EIO: the other side closed
                break
            if not chunk:
                break
            chunks.append(chunk)
        process.wait(timeout=30)
    finally:
        os.close(primary)
    return b"".join(chunks).decode(errors="replace").replace("\r\n", "\n")
