"""``bonescan listen``: run the DICOM listener alone (C-ECHO, C-STORE into spool and database).

The listener is its own process, started here with ``exec`` of ``python -m listeners``: the
``pipeline`` layer may not import ``listeners`` (import-linter layers), and the listener process
must stay small and start fast, with none of what the CLI or the workers load.
"""

from __future__ import annotations

import os
import sys

from pipeline.cli.common import settings_or_exit


def listen() -> None:
    """Run the DICOM listener (settings from BONESCAN_LISTENER__*); stop it with SIGTERM."""
    settings_or_exit()  # a bad variable is one line and exit 1 here, before exec
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, "-m", "listeners"])  # noqa: S606 (no shell)
