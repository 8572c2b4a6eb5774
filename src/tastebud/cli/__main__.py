"""Run the command line as ``python -m tastebud.cli``."""

import sys

from tastebud.cli import main

sys.exit(main())
