"""The Celery worker: app, settings, engine/session factory, per-process set-up, CLI.

`celery -A worker worker` and `celery -A worker beat` find the app here.
"""

from worker.celery_app import app, create_app

__all__ = ["app", "create_app"]
