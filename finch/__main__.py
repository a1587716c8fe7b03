"""`python -m finch ...` runs the `finch` command (for machines where the script is not on PATH)."""

import sys

from finch.cli import main

sys.exit(main())
