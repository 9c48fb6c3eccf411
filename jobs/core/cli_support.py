"""Running an entry point so that failures reach the operator as one line, not a stack trace."""
from __future__ import annotations

import logging
import os
import sys

from bundlecast.jobs.core.errors import PERMANENT_EXIT, PermanentError, one_line


def run_main(body) -> int:
    """Call ``body()``; print any error as one line on stderr and return a non-zero code
    (:data:`PERMANENT_EXIT` when a retry cannot help, 1 otherwise). Set BUNDLECAST_DEBUG=1
    to see the full traceback."""
    logging.basicConfig(level=logging.INFO if os.environ.get("BUNDLECAST_DEBUG") else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        body()
        return 0
    except KeyboardInterrupt:
        print("bundlecast: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the whole point is one readable line
        if os.environ.get("BUNDLECAST_DEBUG"):
            raise
        print(f"bundlecast: error: {one_line(exc)}", file=sys.stderr)
        return PERMANENT_EXIT if isinstance(exc, PermanentError) else 1
