"""Crash safety at full size: 100,000 records, SIGKILL at 20 random moments, restart each time.

Runs tests/test_crash_safety.py (the CI-sized proof) with the full-size figures and
prints its verdict. Usage: .venv/bin/python bench/kill_test.py [--records N] [--kills K]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--kills", type=int, default=20)
    args = parser.parse_args()
    env = {**os.environ, "FRESHD_KILL_RECORDS": str(args.records), "FRESHD_KILL_COUNT": str(args.kills)}
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             str(ROOT / "tests" / "test_crash_safety.py")], env=env, cwd=ROOT, check=False)
    verdict = "passed" if result.returncode == 0 else "FAILED"
    print(f"kill test: {args.records} records, {args.kills} SIGKILLs: {verdict} "
          f"in {time.perf_counter() - started:.0f} s")
    sys.exit(result.returncode)
