"""`python -m sagan_plugin` (also under torchrun) is the `sagan-plugin` command."""

import sys

from sagan_plugin.cli import main

sys.exit(main())
