"""An app whose changes a change follower reads, in this process (no Celery): what the
in-process data-driven tests (tests/test_data_driven.py) and the reference model
(tests/test_data_driven_model.py) share."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.orm import sessionmaker

from cachework.cache.invalidation import track
from cachework.cache.items import changes
from cachework.database import Database
from cachework.worker.change_follower import ChangeFollower
from cachework.worker.runtime import Runtime
from demo.seed import seed
from tests.conftest import make_env, settings_of
from tests.invalidation_helpers import outbox_count


class Sent(list):
    """The follower's `send`: records (project, app, names); nothing is dispatched."""

    def __call__(self, project, app_name, names) -> None:
        self.append((project, app_name, names))


@dataclass
class Followed:
    """A started runtime (relay on), the app's tracked session factory, and a follower
    (no debounce) whose first pass has put it at the log's head."""

    runtime: Runtime
    Session: sessionmaker
    follower: ChangeFollower
    sent: Sent


@contextmanager
def followed_app(database: Database, tmp_path: Path) -> Iterator[Followed]:
    """The demo app seeded with 3 projects and 12 products, followed (see `Followed`)."""
    with database.session() as session:
        seed(session, projects=3, products=12)
    env = make_env(
        tmp_path, database_url=database.url, redis_url="off", rebuild_delay="0", rebuild_every="0"
    )
    runtime = Runtime(settings_of(env), database=database).start(relay=True)
    app_engine = sa.create_engine(database.url, poolclass=sa.pool.NullPool)
    factory = sessionmaker(app_engine)
    tracking = track(factory, runtime)
    sent = Sent()
    follower = ChangeFollower(
        runtime.database.engine,
        runtime.invalidation_log(),
        runtime.item_reads,
        sent,
        delay=0,
        every=0,
        resend=60,
    )
    try:
        follower.follow_once()  # the first pass starts at the log's head
        yield Followed(runtime, factory, follower, sent)
    finally:
        tracking.stop()
        runtime.stop()
        app_engine.dispose()


def follow(runtime: Runtime, follower: ChangeFollower, timeout: float = 10.0) -> set:
    """Relay what is committed, let the follower read it all; the pending scopes.

    The outbox is seen empty before a pass that reads nothing, not after: a relay that
    commits between a pass and the outbox count would otherwise leave its entry unread."""
    engine = runtime.database.engine
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not outbox_count(engine) and follower.follow_once() == 0:
            break
        time.sleep(0.02)
    else:
        raise AssertionError(f"the follower did not catch up within {timeout}s")
    with engine.connect() as conn:
        return {(r["project"], r["app_name"], r["name"]) for r in changes.pending(conn)}
