"""A web app's own Celery app, not cachework's: its own task and its own workers.

tests/test_any_client.py starts `celery -A tests.foreign_app worker` (consuming Celery's
default queue `celery`) on a broker it shares with cachework workers. It imports nothing
of cachework.
"""

import os

from celery import Celery

app = Celery(
    "foreign",
    broker=os.environ["FOREIGN_BROKER_URL"],
    backend=os.environ["FOREIGN_RESULT_BACKEND"],
)
app.conf.update(
    accept_content=["json"],
    task_serializer="json",
    result_serializer="json",
    result_extended=True,
    broker_connection_retry_on_startup=True,
)


@app.task(name="myapp.whoami", bind=True)
def whoami(self, n: int = 0) -> dict:
    """Which worker ran this: the foreign app's node name and pool process."""
    return {"app": "foreign", "n": n, "hostname": self.request.hostname, "pid": os.getpid()}
