#!/usr/bin/env python3
"""Screenshot every page of a running Tastebud Studio into docs/studio/<page>.png (headless Chromium over CDP).

    python scripts/screenshots.py http://127.0.0.1:8501 [--out docs/studio] [--page discover ...]

Exits 1 when a page shows an error element or no main content, 2 when Chromium or the studio is missing. The
logic lives in :mod:`tastebud.studio.screenshots`; ``make screenshots`` starts an API and a studio and runs it.
"""

from __future__ import annotations

import sys

from tastebud.studio.screenshots import main

if __name__ == "__main__":
    sys.exit(main())
