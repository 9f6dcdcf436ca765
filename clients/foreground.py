"""Keep a client's server (MLLP endpoint, DICOM node) in the foreground until Ctrl-C."""

from __future__ import annotations

import time


def wait_until_interrupted() -> int:
    """Block until Ctrl-C; the exit status of a clean stop."""
    try:
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        return 0
