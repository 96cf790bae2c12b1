"""A web app's process with automatic invalidation, as a plain script: its own engine and
Session, one `track()` call, no Celery, no publish().

Driven line by line over stdin/stdout by tests/test_tracking_web_app.py, with the
worker's CACHEWORK_* environment. Each answer is one JSON line.
"""

from __future__ import annotations

import json
import os
import sys
import time

import sqlalchemy as sa
from sqlalchemy.orm import sessionmaker

from cachework.cache.invalidation import track
from cachework.worker.runtime import start_runtime


def say(**fields) -> None:
    print(json.dumps(fields), flush=True)


def main() -> None:
    runtime = start_runtime()  # caught up and listening; the workers relay the outbox
    from demo.models import Category  # the app's models (the runtime set them up)

    engine = sa.create_engine(os.environ["CACHEWORK_DATABASE_URL"])
    Session = sessionmaker(engine)  # the app's own session factory
    tracking = track(Session, runtime)  # the one call
    table = runtime.registry.table("categories")
    try:
        say(step="started", name=table.get(1)["name"], listening=runtime.listening)
        for line in sys.stdin:
            command, _, argument = line.strip().partition(" ")
            how, _, outcome = command.partition("-")  # e.g. "orm", "bulk-rollback"
            if how in ("orm", "bulk", "raw"):
                session = Session()
                try:
                    if how == "orm":
                        session.get(Category, 1).name = argument
                    elif how == "bulk":
                        session.execute(
                            sa.update(Category).where(Category.id == 1).values(name=argument)
                        )
                    else:  # behind the ORM's back: only the triggers see it
                        session.execute(
                            sa.text("UPDATE categories SET name = :n WHERE id = 1"),
                            {"n": argument},
                        )
                    session.flush()
                    if outcome == "rollback":
                        session.rollback()
                    else:
                        session.commit()
                finally:
                    session.close()
                say(step=command, stats=tracking.stats)
            elif command == "code":  # an indexed non-key column: lookups by old and new
                with Session.begin() as session:
                    row = session.get(Category, 1)
                    old, row.code = row.code, argument
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline:
                    by_old = table.by_cache_key(old)[0]
                    by_new = table.by_cache_key(argument)[0]
                    if by_old is None and by_new is not None:
                        break
                    time.sleep(0.05)
                say(
                    step="code",
                    old=None if by_old is None else by_old["id"],
                    new=None if by_new is None else by_new["id"],
                )
            elif command == "quit":
                break
    finally:
        tracking.stop()
        engine.dispose()
        runtime.close()
    say(step="stopped")


if __name__ == "__main__":
    main()
