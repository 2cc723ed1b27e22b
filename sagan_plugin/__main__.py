"""`python -m sagan_plugin` (also under torchrun) is the `sagan-plugin` command."""

import sys

from sagan_plugin.cli import main

if __name__ == "__main__":  # not when a spawned worker re-imports this module
    sys.exit(main())
