"""A retrain in a child process that stops at one stage, so the SIGKILL tests can kill it there.

Usage: ``python _retrain_proc.py SETTINGS_JSON MODEL_NAME STAGE MARKER``: builds the settings from the JSON, runs
``run_retrain`` (trigger ``schedule``), and when the retrain reports ``STAGE`` writes its pid to ``MARKER`` and
sleeps until it is killed.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from tastebud.config import build_settings
from tastebud.pipeline.retrain import run_retrain


def main() -> None:
    overrides, model_name, stop_at, marker = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3], Path(sys.argv[4])

    def on_stage(name: str) -> None:
        if name == stop_at:
            marker.write_text(str(os.getpid()))
            time.sleep(600)  # until SIGKILL

    out = run_retrain(build_settings(**overrides), model_name=model_name, trigger="schedule", on_stage=on_stage)
    sys.exit(f"the retrain finished ({out.outcome}: {out.reason}) instead of stopping at {stop_at!r}")


if __name__ == "__main__":
    main()
