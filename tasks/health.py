"""A health-check task that proves the whole path: broker, child process, database."""

from __future__ import annotations

import os
import time

import sqlalchemy as sa
from celery import shared_task

from cachework.errors import ValidationError, shown
from cachework.worker import routing
from cachework.worker.celery_app import require_runtime


@shared_task(name=routing.PING, bind=True)
def ping(self, hold: float = 0.0) -> dict:
    """Answer with this child's pid and its database connection's server-side id.

    `hold` (at most 5 s) keeps the child busy, so concurrent pings reach several children.
    """
    if isinstance(hold, bool) or not isinstance(hold, int | float) or not 0 <= hold <= 5:
        raise ValidationError(f"hold={shown(hold)} must be a number of seconds from 0 to 5")
    database = require_runtime(self.app).database
    with database.session() as session:
        if session.bind.dialect.name == "postgresql":
            backend = session.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
        else:
            backend = session.execute(sa.text("SELECT 1")).scalar_one()
    time.sleep(hold)
    return {"pid": os.getpid(), "backend": backend, "dialect": session.bind.dialect.name}
