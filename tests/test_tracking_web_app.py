"""Automatic invalidation across processes: real prefork workers and a web app's own
process (a plain script with its own Session, tests/tracking_web_app.py) that writes
through the ORM, with a bulk ORM update and with raw SQL under the PostgreSQL triggers,
never calling publish(). After each commit, a `cachework.lookup` sent after the commit
returns the new value in every child; after each rollback no event exists."""

from __future__ import annotations

import sqlalchemy as sa

from cachework.cache.invalidation import RedisLog
from cachework.cache.invalidation import triggers as db_triggers
from cachework.cache.invalidation.tracking import dependencies
from cachework.schema import invalidation_outbox
from cachework.worker.runtime import Runtime
from tests.conftest import make_env, settings_of
from tests.invalidation_helpers import wait_until
from tests.test_web_app import WebApp, _every_child_reads


def test_orm_bulk_and_raw_writes_reach_every_child_with_no_publish_call(
    tmp_path, pg_database, redis_url, worker_process
):
    from demo.seed import seed

    with pg_database.session() as session:
        seed(session, projects=1, products=4)
    url = pg_database.engine.url.render_as_string(hide_password=False)
    env = make_env(tmp_path, database_url=url, broker_url=redis_url, result_backend=redis_url)
    runtime = Runtime(settings_of(env))
    try:
        deps = dependencies(runtime)  # demo: categories by id, and the plugin's reads
        log = runtime.invalidation_log()
        _node, app = worker_process(env, concurrency=2)
        assert _every_child_reads(app, "Tools")

        def outbox_rows() -> int:
            with pg_database.engine.connect() as conn:
                count = sa.select(sa.func.count()).select_from(invalidation_outbox)
                return conn.execute(count).scalar_one()

        def nothing_published(head: str) -> None:
            assert outbox_rows() == 0
            assert log.state().head == head

        web = WebApp(env, "tracking_web_app.py")
        try:
            assert web.answer() == {"step": "started", "name": "Tools", "listening": True}
            for how in ("orm", "bulk", "raw"):
                if how == "raw":  # ORM writes needed no trigger; raw SQL does
                    max_keys = runtime.settings.invalidation_max_keys
                    db_triggers.install(pg_database.engine, deps, max_keys)
                name = f"By{how}"
                answer = web.ask(f"{how} {name}")
                assert answer["step"] == how
                assert _every_child_reads(app, name)  # lookups sent after the commit

                # A trigger's row waits for the workers' relay (a task start applies it
                # from the outbox meanwhile): let it pass before the rollback's check.
                wait_until(lambda: outbox_rows() == 0, timeout=20)
                head = log.state().head
                assert web.ask(f"{how}-rollback Never{how}")["step"] == f"{how}-rollback"
                nothing_published(head)
                assert _every_child_reads(app, name)
            # ORM tracking wrote one event per committed ORM write and affected cached
            # table or item reads (categories: the cached table, and the demo plugin's
            # `by_category`, which reads it whole); a rolled-back one writes nothing, and
            # raw SQL none, which the trigger covered.
            assert answer["stats"]["events"] == 2 * 2

            assert web.ask("code renamed-code") == {"step": "code", "old": None, "new": 1}
        finally:
            web.close()
        assert web.proc.returncode == 0
        assert isinstance(log, RedisLog)
    finally:
        db_triggers.remove(pg_database.engine)
        runtime.close()
