"""``python -m bearerguard``: the command line of ``bearerguard.cli``."""

import sys

if __name__ == "__main__":
    try:
        from bearerguard.cli import main
    except KeyboardInterrupt:  # Ctrl-C while the command line loads: exit 130, no traceback
        from bearerguard._cli_common import interrupted

        sys.exit(interrupted(sys.argv[1:]))
    sys.exit(main())
