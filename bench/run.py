"""Run every benchmark in bench/ with its defaults and print its figures (./dev bench)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHMARKS = ["sync_woocommerce.py", "kill_test.py", "fleet.py", "policy_overhead.py", "cluster.py", "events.py",
              "twoway.py"]

if __name__ == "__main__":
    failed = 0
    for name in BENCHMARKS:
        print(f"== {name}", flush=True)
        failed |= subprocess.run([sys.executable, str(HERE / name)], check=False).returncode
    sys.exit(failed)
