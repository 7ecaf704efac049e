"""`python -m sr`: the command line (sr/cli.py)."""
from __future__ import annotations

import sys

from sr.cli import main

if __name__ == "__main__":
    sys.exit(main())
