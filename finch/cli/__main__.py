"""`python -m finch.cli ...`, as before the CLI became a package (torchrun's relaunch uses `finch.cli.commands`)."""

import sys

from finch.cli import main

sys.exit(main())
