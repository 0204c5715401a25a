"""`freshctl` as people and scripts meet it (issue 15 parts 1-3): checked connections, exit codes and
JSON errors for scripts, quiet ends in a terminal, completion."""

from __future__ import annotations

import functools
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

from freshd.config import load_config
from freshd.connectors import base
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
from freshd.errors import ConfigError, ConfigErrors
from tests.helpers import query
from tests.test_daemon import CREDS, start_daemon

UNREACHABLE = "http://127.0.0.1:9"  # the discard port: nothing listens there


async def woo(nursery: trio.Nursery) -> tuple[WooCommerceSimulator, str]:
    sim = WooCommerceSimulator(records=20, seed=7, credentials=CREDS)
    port = await nursery.start(functools.partial(serve_asgi, sim.app, host="127.0.0.1", port=0))
    return sim, f"http://127.0.0.1:{port}"


async def run(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return await trio.to_thread.run_sync(functools.partial(
        subprocess.run, command, capture_output=True, text=True, timeout=30, **kwargs))


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
        assert unreachable.returncode != 0 and "cannot be used" in unreachable.stderr, unreachable
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
    monkeypatch.setitem(base._REGISTRY, "flaky", f"{__name__}:_FlakyCredentialsConnector")
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
