"""The team's Celery app: `celery -A worker worker`."""

from celery import Celery

celery = Celery("team")
celery.config_from_object("celeryconfig")

import tasks  # noqa: E402, F401 - registers the team's tasks
