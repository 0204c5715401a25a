"""The embedded PostgreSQL is an extra: without it, `freshd run` with no database_url says what to do."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

# freshd as installed without the `embedded` extra: importing pgserver fails
WITHOUT_PGSERVER = (
    "import sys; sys.modules['pgserver'] = None; from freshd.cli import main; sys.exit(main(sys.argv[1:]))"
)


def run_freshd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", WITHOUT_PGSERVER, *args], capture_output=True, text=True,
                          timeout=60, check=False)


def test_run_without_database_url_or_pgserver_is_one_line_and_exit_1(tmp_path: Path) -> None:
    config = tmp_path / "freshd.toml"
    config.write_text(f'state_dir = "{tmp_path / "state"}"\n[admin]\nsocket = "{tmp_path / "run" / "admin.sock"}"\n')
    result = run_freshd("run", "--config", str(config))
    assert result.returncode == 1
    (line,) = result.stderr.splitlines()
    assert line.startswith("freshd: ") and "freshd[embedded]" in line and "database_url" in line
    assert not (tmp_path / "state").exists() and not (tmp_path / "run").exists()  # nothing started


def test_demo_without_pgserver_says_the_same(tmp_path: Path) -> None:
    result = run_freshd("demo", "--state-dir", str(tmp_path))
    assert result.returncode == 1 and "freshd[embedded]" in result.stderr
    assert len(result.stderr.splitlines()) == 1


def test_run_with_database_url_does_not_need_pgserver(tmp_path: Path) -> None:
    """A database_url is all production needs: the check does not fire (the store is what fails here)."""
    config = tmp_path / "freshd.toml"
    config.write_text(f'database_url = "postgresql://nobody@127.0.0.1:1/none?connect_timeout=1"\n'
                      f'state_dir = "{tmp_path / "state"}"\n[admin]\nsocket = "{tmp_path / "run" / "admin.sock"}"\n'
                      '[metrics]\naddress = ""\n')
    result = run_freshd("run", "--config", str(config))
    assert result.returncode == 1
    assert "freshd[embedded]" not in result.stderr and "store" in result.stderr
