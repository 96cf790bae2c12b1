"""Process wiring: the per-process runtime and its jobs, metrics and health, the worker's
lifecycle, the Celery app, and the CLI (above `cache/` and `importers/`).

`celery -A cachework.worker worker` and `celery -A cachework.worker beat` find the app
here. The app is built on first access (`cachework.worker.app`), so importing a small
module of this package (`cachework.worker.routing`) builds no Celery app and reads no
settings. In a checkout, `worker/` is this package (pyproject's package-dir).
"""

from __future__ import annotations

from typing import Any

__all__ = ["app", "create_app"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from cachework.worker import celery_app

        return getattr(celery_app, name)
    raise AttributeError(f"module 'worker' has no attribute {name!r}")


from cachework.moves import alias_checkout_name  # noqa: E402

alias_checkout_name(__name__)  # a checkout's `import worker`: the same modules, not a copy
