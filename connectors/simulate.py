"""`freshd simulate PROVIDER`: run a provider simulator on loopback until interrupted."""

from __future__ import annotations

import argparse
import contextlib
import functools
import sys
from collections.abc import Callable

import trio

from freshd.connectors.registry import providers, simulator_class
from freshd.connectors.simulator import Simulator, serve_asgi


async def run_churn(changes: Callable[[int], object], per_second: float) -> None:
    """Keep changing a simulator's records, `per_second` changes a second on average, until cancelled."""
    while True:
        await trio.sleep(1.0 / per_second)
        changes(1)


async def run_simulator(
    provider: str,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    records: int = 100,
    seed: int = 1,
    credentials: dict[str, str] | None = None,
    churn: float = 0.0,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve one simulator until cancelled; reports the port it listens on."""
    sim: Simulator = simulator_class(provider)(records=records, seed=seed, credentials=credentials)
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(functools.partial(serve_asgi, sim.app, host, port))
        if churn > 0:
            nursery.start_soon(run_churn, sim.random_changes, churn)
        task_status.started(bound)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="freshd simulate", description="Run a provider simulator on loopback.")
    parser.add_argument("provider", help=f"one of: {', '.join(providers())}")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument("--records", type=int, default=100, help="records per entity")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--credential", action="append", default=[], metavar="KEY=VALUE",
                        help="credentials the simulator accepts (as given to `freshctl connections add`)")
    parser.add_argument("--churn", type=float, default=0.0, help="random changes per second")
    args = parser.parse_args(argv)
    if args.provider not in providers():
        parser.error(f"unknown provider {args.provider!r}; valid: {', '.join(providers())}")
    credentials = {}
    for pair in args.credential:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            parser.error(f"--credential takes KEY=VALUE, got {pair!r}")
        credentials[key] = value

    async def serve() -> None:
        async with trio.open_nursery() as nursery:
            port = await nursery.start(functools.partial(
                run_simulator, args.provider, host=args.host, port=args.port, records=args.records,
                seed=args.seed, credentials=credentials or None, churn=args.churn,
            ))
            print(f"{args.provider} simulator listening on http://{args.host}:{port}", flush=True)

    with contextlib.suppress(KeyboardInterrupt):
        trio.run(serve)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
