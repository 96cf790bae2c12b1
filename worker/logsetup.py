"""Our logging set-up; Celery's root-logger hijack is off (`worker_hijack_root_logger`)."""

from __future__ import annotations

import logging
import sys

FORMAT = "%(asctime)s %(levelname)s [%(processName)s %(process)d] %(name)s: %(message)s"


def most_verbose(*levels: str | int | None) -> int:
    """The most verbose of `levels` (names or numbers; None ignored), as a number.

    Celery always passes a level (`-l`, default WARNING) and cannot say whether the user
    chose it, so the worker logs at the more verbose of `-l` and CACHEWORK_LOG_LEVEL."""
    numbers = [
        logging.getLevelName(level.upper()) if isinstance(level, str) else level
        for level in levels
        if level is not None
    ]
    numbers = [n for n in numbers if isinstance(n, int)]
    return min(numbers) if numbers else logging.INFO


def configure_logging(level: str | int = "INFO", logfile: str | None = None) -> None:
    """One handler on the root logger (stderr, or `logfile`); idempotent."""
    root = logging.getLogger()
    if not any(getattr(h, "_cachework", False) for h in root.handlers):
        handler: logging.Handler = (
            logging.FileHandler(logfile) if logfile else logging.StreamHandler(sys.stderr)
        )
        handler.setFormatter(logging.Formatter(FORMAT))
        handler._cachework = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(level)
