"""`freshd demo` starts anew each run: its simulators keep their records in memory, so a database
kept from the last run would read the records it had written into them as deleted."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from freshd.demo import DEMO_MARKER, fresh_state
from freshd.errors import StartupError


def test_a_second_demo_starts_afresh_so_its_new_simulators_are_not_read_as_deletions(tmp_path: Path) -> None:
    state = tmp_path / "demo"
    fresh_state(state)
    assert [p.name for p in state.iterdir()] == [DEMO_MARKER]
    # what a run leaves: its database, Valkey data, config and key
    (state / "postgres" / "base").mkdir(parents=True)
    (state / "postgres" / "base" / "1").write_text("cursors and records of the last run")
    (state / "postgres" / "postmaster.pid").write_text("999999999\n")  # stale: its server has stopped
    (state / "valkey").mkdir()
    (state / "demo.toml").write_text("# the last run's ports")
    (state / "secret.key").write_text("k")
    fresh_state(state)
    assert [p.name for p in state.iterdir()] == [DEMO_MARKER]


def test_an_older_demos_directory_without_the_marker_is_recognised_by_its_config(tmp_path: Path) -> None:
    (tmp_path / "demo.toml").write_text("# written by an earlier freshd demo")
    (tmp_path / "postgres").mkdir()
    fresh_state(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [DEMO_MARKER]


def test_a_directory_the_demo_did_not_make_is_refused_and_left_as_it_was(tmp_path: Path) -> None:
    (tmp_path / "important.db").write_text("someone's data")
    with pytest.raises(StartupError, match=r"not a demo.s state directory.*--state-dir"):
        fresh_state(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["important.db"]


def test_a_demo_still_running_on_the_directory_is_refused_and_its_files_kept(tmp_path: Path) -> None:
    fresh_state(tmp_path)
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (tmp_path / "postgres").mkdir()
        (tmp_path / "postgres" / "postmaster.pid").write_text(f"{alive.pid}\n/some/data\n")
        with pytest.raises(StartupError, match=f"a demo is running.*process {alive.pid}"):
            fresh_state(tmp_path)
        assert (tmp_path / "postgres" / "postmaster.pid").exists()
    finally:
        alive.kill()
        alive.wait()
    assert os.path.exists(tmp_path / DEMO_MARKER)
