"""A WSGI app as a team writes it, for gunicorn with `--preload` (tests/test_enable_forks.py):
its db module calls `enable(Session)` once, in gunicorn's main process; the workers are
forked from it.

    POST /rename/NAME  renames category 1 through the app's Session, then reads the cached
                       table in the same process (read-your-writes in a forked worker)
    GET /name          the cached name of category 1 in this worker, and its pid, after
                       holding the worker 0.2 s (so two requests at once reach two workers)
"""

import json
import os
import time

import sqlalchemy as sa
from sqlalchemy.orm import sessionmaker

from cachework.api import enable

engine = sa.create_engine(os.environ["CACHEWORK_DATABASE_URL"])
Session = sessionmaker(engine)
runtime = enable(Session)
MAIN_PID = os.getpid()


def _name() -> str:
    return runtime.registry.table("categories").get(1)["name"]


def app(environ, start_response):
    path = environ["PATH_INFO"]
    if environ["REQUEST_METHOD"] == "POST" and path.startswith("/rename/"):
        name = path.removeprefix("/rename/")
        with Session.begin() as session:
            session.execute(sa.text("SELECT 1"))  # the session's transaction, tracked
            from demo.models import Category

            session.get(Category, 1).name = name
        body = {"pid": os.getpid(), "name": _name()}
    else:
        time.sleep(0.2)
        body = {"pid": os.getpid(), "name": _name(), "main": MAIN_PID,
                "listening": runtime.listening}  # fmt: skip
    start_response("200 OK", [("Content-Type", "application/json")])
    return [json.dumps(body).encode()]
