"""`python -m cachenet` runs the command line."""

import sys

from cachenet.cli import main

sys.exit(main())
