"""``python -m listeners``: the DICOM C-STORE listener (``bonescan listen`` runs this).

Settings come from ``BONESCAN_*`` variables and ``.env`` (see the README); there are no options.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    """Parse the (empty) command line, read the settings, serve until SIGTERM."""
    parser = argparse.ArgumentParser(
        prog="python -m listeners",
        description="bonescan DICOM listener: C-ECHO and C-STORE into the spool and the database. "
        "Configured by BONESCAN_* environment variables (BONESCAN_LISTENER__PORT, ...).",
    )
    parser.parse_args(argv)

    # Imported after argparse so that --help answers at once (PLC0415 on purpose).
    from pipeline.logs import configure_logging  # noqa: PLC0415
    from pipeline.settings import InvalidSettingsError, get_settings  # noqa: PLC0415

    try:
        settings = get_settings()
    except InvalidSettingsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    configure_logging(settings.log_level, settings.log_format)

    from listeners.app import serve  # noqa: PLC0415

    try:
        return serve(settings)
    except OSError as error:  # the port is taken, the spool folder cannot be made, ...
        print(f"error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
