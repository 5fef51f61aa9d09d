"""``python -m bearerguard``: the command line of ``bearerguard.cli``."""

import sys

from bearerguard.cli import main

if __name__ == "__main__":
    sys.exit(main())
