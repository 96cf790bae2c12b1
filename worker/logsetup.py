"""Our logging set-up; Celery's root-logger hijack is off (`worker_hijack_root_logger`)."""

from __future__ import annotations

import logging
import sys

FORMAT = "%(asctime)s %(levelname)s [%(processName)s %(process)d] %(name)s: %(message)s"


def configure_logging(level: str = "INFO") -> None:
    """One stderr handler on the root logger; idempotent."""
    root = logging.getLogger()
    if not any(getattr(h, "_cachework", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(FORMAT))
        handler._cachework = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(level)
