"""``python -m harness.study``: the study's command line, ``harness.sweep.cli``."""

import sys

from harness.sweep.cli import main

if __name__ == "__main__":
    sys.exit(main())
