"""Providers register themselves (freshd.connectors.registry): one folder under connectors/ is a provider.

The last test adds a provider the way a contributor would, a folder with `PROVIDER`, a connector
and a simulator, in a temporary directory on the package's path, and syncs it with no other edit.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

import freshd.connectors
from freshd.connectors import registry
from freshd.connectors.base import Connector, connector_class, providers
from freshd.connectors.simulate import run_simulator
from freshd.connectors.simulator import Simulator
from freshd.errors import ConfigError
from freshd.store.jobs import JobKind, JobStatus
from tests.rig import open_rig

ROOT = Path(__file__).resolve().parent.parent
PROVIDER_FOLDERS = sorted(p.parent.name for p in (ROOT / "connectors").glob("*/connector.py"))


def test_every_provider_folder_is_registered_under_its_name() -> None:
    assert len(PROVIDER_FOLDERS) >= 6
    assert providers() == tuple(PROVIDER_FOLDERS)
    for name in PROVIDER_FOLDERS:
        cls = connector_class(name)
        assert issubclass(cls, Connector)
        assert cls.provider == name
        assert cls.__module__ == f"freshd.connectors.{name}.connector"


@pytest.mark.parametrize("name", PROVIDER_FOLDERS)
def test_every_provider_has_its_doc(name: str) -> None:
    doc = registry.provider(name).doc
    assert doc == f"docs/connectors/{name}.md"
    assert (ROOT / doc).is_file()


@pytest.mark.parametrize("name", PROVIDER_FOLDERS)
def test_every_simulator_follows_the_simulator_protocol(name: str) -> None:
    cls = registry.simulator_class(name)
    assert cls.__module__ == f"freshd.connectors.{name}.simulator"
    sim = cls(records=2, seed=3, credentials=None)
    assert isinstance(sim, Simulator)
    assert sim.token_requests == 0
    changes = sim.random_changes(3)
    assert sum(changes.values()) == 3


def test_an_unknown_provider_is_an_error_listing_the_valid_ones() -> None:
    with pytest.raises(ConfigError, match=r"unknown provider 'nope'; valid providers: amazon_sp, odoo, orion, "):
        connector_class("nope")
    with pytest.raises(ConfigError, match=r"unknown provider 'nope'; valid providers: amazon_sp, "):
        registry.simulator_class("nope")


def test_reading_the_registry_imports_no_connector_or_simulator() -> None:
    """The daemon loads only the providers it runs: a provider's __init__ must stay light."""
    code = ("import sys; from freshd.connectors.base import providers, connector_class; providers(); "
            "connector_class('rest'); print(' '.join(sorted(sys.modules)))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    heavy = [m for m in loaded if m.startswith("freshd.connectors.") and m.count(".") == 3]
    # (the paginators are the listing engine's, shared: freshd.connectors.paginators)
    assert heavy == ["freshd.connectors.rest.config", "freshd.connectors.rest.connector"]


# A whole provider, as a contributor would write it: one folder.
TINY = {
    "__init__.py": '''
        """Tiny: notes, one page."""

        from freshd.connectors.registry import Provider

        PROVIDER = Provider(
            "tiny",
            connector="freshd.connectors.tiny.connector:TinyConnector",
            simulator="freshd.connectors.tiny.simulator:TinySimulator",
            doc="docs/connectors/tiny.md",
        )
    ''',
    "connector.py": '''
        from typing import Any

        from freshd.connectors.base import Connector, StreamSpec, SyncContext, SyncMode
        from freshd.connectors.listing import run_listing
        from freshd.connectors.paginators import NoPaging
        from freshd.connectors.streams import Listing

        # declared as data: one GET returns the whole listing (the listing engine does the rest)
        NOTES = StreamSpec("notes", "/notes", listing=Listing(NoPaging()))


        class TinyConnector(Connector):
            provider = "tiny"
            streams = (NOTES,)

            async def sync_entity(self, stream: StreamSpec, state: dict[str, Any] | None, mode: SyncMode,
                                  ctx: SyncContext) -> None:
                client = self.http_client(self.settings.base_url)
                try:
                    await run_listing(stream, state, mode, ctx, client)
                finally:
                    await client.aclose()
    ''',
    "simulator.py": '''
        from freshd.connectors.simulator import Request, Response, SimulatorApp


        def error(status: int, code: str, message: str) -> Response:
            return Response.json({"code": code, "message": message}, status)


        class TinySimulator:
            token_requests = 0

            def __init__(self, records: int = 100, seed: int = 1, credentials: dict[str, str] | None = None) -> None:
                self.notes = {str(i): {"id": i, "text": f"note {i}"} for i in range(1, records + 1)}
                self.app = SimulatorApp(error)
                self.app.route("GET", "/notes", self._list)

            async def _list(self, request: Request) -> Response:
                return Response.json(list(self.notes.values()))

            def random_changes(self, count: int) -> dict[str, int]:
                for _ in range(count):
                    self.mutate("notes")
                return {"created": count}

            def count(self, entity: str) -> int:
                return len(self.notes)

            def mutate(self, entity: str) -> dict[str, str | None]:
                new = str(len(self.notes) + 1)
                self.notes[new] = {"id": int(new), "text": "new"}
                return {"created": new, "updated": None, "deleted": None}

            def corrupt(self, entity: str) -> str:
                self.notes["1"]["text"] = "bad\\x00"
                return "1"
    ''',
}


@pytest.fixture
def tiny_provider(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """connectors/tiny/, written in a temporary directory added to the package's path."""
    folder = tmp_path / "extra" / "tiny"
    folder.mkdir(parents=True)
    for name, source in TINY.items():
        (folder / name).write_text(textwrap.dedent(source).lstrip(), encoding="utf-8")
    monkeypatch.setattr(freshd.connectors, "__path__", [*freshd.connectors.__path__, str(folder.parent)])
    yield
    for module in [m for m in sys.modules if m == "freshd.connectors.tiny" or m.startswith("freshd.connectors.tiny.")]:
        del sys.modules[module]


@pytest.mark.usefixtures("tiny_provider")
async def test_a_provider_folder_on_the_package_path_is_found_with_no_other_edit(database_url: str) -> None:
    from freshd.connectors.base import ConnectionSettings

    assert providers() == tuple(sorted([*PROVIDER_FOLDERS, "tiny"]))
    assert connector_class("tiny").__qualname__ == "TinyConnector"
    assert connector_class("tiny").__module__ == "freshd.connectors.tiny.connector"
    assert registry.simulator_class("tiny").__qualname__ == "TinySimulator"
    with pytest.raises(ConfigError, match=r"valid providers: .*powens, rest, tiny, woocommerce"):
        connector_class("tinyy")

    with trio.fail_after(30):
        # `freshd simulate tiny` serves it ...
        async with trio.open_nursery() as nursery:
            port = await nursery.start(run_simulator, "tiny")
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            await stream.send_all(b"GET /notes HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            reply = b""
            while chunk := await stream.receive_some():
                reply += chunk
            assert reply.startswith(b"HTTP/1.1 200") and b'"note 100"' in reply
            nursery.cancel_scope.cancel()
        # ... and the engine syncs it into the store
        sim = registry.simulator_class("tiny")(records=7)
        async with open_rig(database_url, sim, lambda url: ConnectionSettings("t", "tiny", url)) as rig:
            outcome, _ = await rig.sync(JobKind.INITIAL)
            assert outcome.status is JobStatus.COMPLETED, outcome.error
            assert rig.live("notes") == sim.count("notes") == 7
