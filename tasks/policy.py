"""The retry policies of cachework's tasks, declared once.

Every task retries a `TransientError` (a database or Redis that cannot be reached, a held
lock) with exponential backoff and never retries bad input (`EXPECTED_ERRORS`: a WARNING
line and a failed result). They differ only in how long a retry may wait.
"""

from __future__ import annotations

from typing import Any

from cachework.errors import TransientError
from cachework.worker.logsetup import EXPECTED_ERRORS


def retrying(first: int, cap: int, tries: int, *, jitter: bool = True) -> dict[str, Any]:
    """`shared_task` options: retry a TransientError `tries` times, `first` seconds apart
    at first, doubling up to `cap` seconds."""
    return {
        "autoretry_for": (TransientError,),
        "retry_backoff": first,
        "retry_backoff_max": cap,
        "retry_jitter": jitter,
        "max_retries": tries,
        "throws": EXPECTED_ERRORS,
    }


# Project cache and invalidation jobs: 1, 2, 4 ... s apart (jittered), at most a minute.
CACHE_JOB = retrying(1, 60, 5)
# Lookups: 1, 2, 4, 8, 8, 8 s apart, so a fast PostgreSQL restart (seconds) is ridden out.
LOOKUP = retrying(1, 8, 6, jitter=False)
# Version imports: 5 s doubling to 5 minutes, jittered (a held import lock waits its turn).
IMPORT = retrying(5, 300, 5)
