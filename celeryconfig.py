"""cachework's Celery settings under the name Celery's documentation gives them.

`build(settings)` turns `CACHEWORK_*` settings into Celery's (lowercase names); it lives in
`worker/celery_settings.py`, which `worker.create_app` uses. Importing this module reads no
settings and builds nothing.
"""

from cachework.worker.celery_settings import build
from cachework.worker.routing import QUEUES, queues

__all__ = ["QUEUES", "build", "queues"]
