"""`python -m freshd`: the `freshd` command (run, migrate, simulate, demo, keygen)."""

import sys

from freshd.cli import main

if __name__ == "__main__":
    sys.exit(main())
