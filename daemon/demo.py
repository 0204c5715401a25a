"""`freshd demo`: the whole thing on one machine with nothing installed.

Starts two WooCommerce simulators on loopback (records that keep changing),
writes a real config file naming them, and runs the daemon on an embedded
PostgreSQL with that file, so `freshctl` (no flags), SIGHUP reloads and the
metrics endpoint all work exactly as in production.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from pathlib import Path

import trio

from freshd.paths import default_socket_path, default_state_dir

DEMO_CREDENTIALS = {"consumer_key": "ck_demo", "consumer_secret": "cs_demo"}

_CONFIG = """\
# Written by `freshd demo`. A real freshd config file: edit it and send SIGHUP to reload.
[log]
level = "info"

[schedule]
sync_interval = "1m"    # short, so the demo shows incremental syncs picking up changes
jitter = "5s"

[staleness]             # demo scale: data is "fresh" for 30 s rather than 2 h
fresh_below = "30s"
stale_after = "5m"
min_gap = "20s"

[metrics]
address = "127.0.0.1:0"

{connections}
"""

_CONNECTION = """\
[[connections]]
name = "{name}"
provider = "woocommerce"
base_url = "http://127.0.0.1:{port}"
tenant = "{tenant}"
credentials = {{ consumer_key = "ck_demo", consumer_secret = "cs_demo" }}
"""


async def _demo(records: int, state_dir: Path) -> None:
    from freshd.app import run_daemon
    from freshd.config import load_config
    from freshd.connectors.simulate import run_simulator

    stores = [("shop-eu", "acme", 1), ("shop-us", "acme", 2)]
    async with trio.open_nursery() as nursery:
        blocks = []
        for name, tenant, seed in stores:
            port = await nursery.start(functools.partial(
                run_simulator, "woocommerce", host="127.0.0.1", port=0, records=records, seed=seed,
                credentials=DEMO_CREDENTIALS, churn=1.0,
            ))
            blocks.append(_CONNECTION.format(name=name, port=port, tenant=tenant))
        config_path = state_dir / "demo.toml"
        config_path.write_text(_CONFIG.format(connections="\n".join(blocks)), encoding="utf-8")
        config = load_config(config_path, env={**os.environ, "FRESHD_STATE_DIR": str(state_dir)})

        async def daemon_then_stop(task_status: trio.TaskStatus[object] = trio.TASK_STATUS_IGNORED) -> None:
            await run_daemon(config, config_path=config_path, task_status=task_status)
            nursery.cancel_scope.cancel()  # the daemon stopped (Ctrl-C): stop the simulators too

        daemon = await nursery.start(daemon_then_stop)
        freshctl = Path(sys.executable).with_name("freshctl")
        ctl = str(freshctl) if freshctl.exists() else "freshctl"
        socket = default_socket_path()
        extra = "" if Path(config.admin.socket) == socket else f" --socket {config.admin.socket}"
        print(
            f"\nfreshd demo is running: {len(stores)} WooCommerce stores syncing into an embedded PostgreSQL.\n"
            f"  config:   {config_path}\n"
            f"  metrics:  {daemon.metrics_url}\n"
            f"  try:      {ctl}{extra} status\n"
            f"            {ctl}{extra} jobs\n"
            f"            {ctl}{extra} sync shop-eu --full\n"
            f"            {ctl}{extra} connections show shop-us\n"
            f"  stop:     Ctrl-C\n",
            flush=True,
        )


def run_demo(*, records: int = 2000, state_dir: Path | None = None) -> int:
    from freshd.logs import configure_logging

    state_dir = state_dir or default_state_dir() / "demo"
    state_dir.mkdir(parents=True, exist_ok=True)
    configure_logging("info", "auto")
    with contextlib.suppress(KeyboardInterrupt):
        trio.run(_demo, records, state_dir)
    return 0
