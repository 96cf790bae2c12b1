"""Process wiring: the per-process runtime and its jobs, metrics and health, the worker's
lifecycle, the Celery app, and the CLI (above `cache/` and `importers/`).

`celery -A worker worker` and `celery -A worker beat` find the app here. The app is built
on first access (`worker.app`), so importing a small module of this package
(`worker.routing`) builds no Celery app and reads no settings.
"""

from __future__ import annotations

from typing import Any

__all__ = ["app", "create_app"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from worker import celery_app

        return getattr(celery_app, name)
    raise AttributeError(f"module 'worker' has no attribute {name!r}")
