"""Run every benchmark in bench/ and print its figures (./dev bench)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHMARKS = ["sync_woocommerce.py"]

if __name__ == "__main__":
    failed = 0
    for name in BENCHMARKS:
        print(f"== {name}", flush=True)
        failed |= subprocess.run([sys.executable, str(HERE / name), *sys.argv[1:]], check=False).returncode
    sys.exit(failed)
