"""Data-driven rebuilds in one process, on SQLite and PostgreSQL (issue 23): a tracked
commit to a table an item declares marks exactly the scopes it touches, through the
outbox, the relay and the log; the follower's pass is one transaction with its cursor;
the debounce rules hold; a rebuild clears what it read; freshness reads say so. The real
workers' side is tests/test_data_driven_worker.py."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from cachework import instruments
from cachework.cache.items import changes
from cachework.cache.items.store import get_item
from cachework.schema import cache_changes
from cachework.worker import jobs
from cachework.worker.change_follower import CURSOR, ChangeFollower
from demo.models import Category, Product, Project
from tests.conftest import make_env
from tests.data_driven_helpers import Sent, followed_app
from tests.data_driven_helpers import follow as follow_all
from tests.invalidation_helpers import outbox_count, wait_until

APP = "inventory"


@pytest.fixture
def app(database, tmp_path) -> Iterator[dict]:
    with followed_app(database, tmp_path) as followed:
        with database.session() as session:
            projects = session.scalars(sa.select(Project.uuid).order_by(Project.uuid))
            projects = [str(p) for p in projects]
        yield {
            "runtime": followed.runtime,
            "Session": followed.Session,
            "follower": followed.follower,
            "sent": followed.sent,
            "projects": projects,
        }


def follow(app: dict) -> set:
    return follow_all(app["runtime"], app["follower"])


def project_of(app: dict, product_id: int) -> str:
    with app["Session"]() as session:
        return str(session.get(Product, product_id).project_uuid)


def test_an_orm_write_marks_exactly_its_projects_items(app):
    p = project_of(app, 1)
    marked = _counted(instruments.metrics().item_changes, APP)
    with app["Session"].begin() as session:
        session.get(Product, 1).price = 123
    assert follow(app) == {(p, APP, "summary"), (p, APP, "by_category")}
    assert _counted(instruments.metrics().item_changes, APP) == marked + 2


def _counted(counter, app: str) -> float:
    """A counter's value for `app`, in this process (prometheus_client's own sample)."""
    return counter.labels(app)._value.get()


def test_a_product_moved_between_projects_marks_both(app):
    p, q = project_of(app, 1), next(x for x in app["projects"] if x != project_of(app, 1))
    with app["Session"].begin() as session:
        session.get(Product, 1).project_uuid = q
    names = ("summary", "by_category")
    assert follow(app) == {(x, APP, n) for x in (p, q) for n in names}


def test_a_rollback_marks_nothing(app):
    with app["Session"]() as session:
        session.get(Product, 1).price = 5
        session.flush()
        session.rollback()
    assert follow(app) == set()


def test_a_whole_table_change_marks_every_project(app):
    with app["Session"].begin() as session:
        session.scalars(sa.select(Category)).first().code = "renamed"
    assert follow(app) == {(p, APP, "by_category") for p in app["projects"]}


def test_a_due_scope_is_sent_once_and_its_rebuild_clears_it(app):
    runtime, follower, sent = app["runtime"], app["follower"], app["sent"]
    p = project_of(app, 1)
    with app["Session"].begin() as session:
        session.get(Product, 1).active = False
    follow(app)
    with runtime.database.session() as session:
        before = changes.freshness(session, APP, "summary", p)
    assert before.pending and before.changed_at is not None
    sent_before = _counted(instruments.metrics().item_rebuilds_sent, APP)
    assert follower.dispatch_once() == 1 and follower.dispatch_once() == 0  # claimed once
    assert sent == [(p, APP, ["by_category", "summary"])]
    assert _counted(instruments.metrics().item_rebuilds_sent, APP) == sent_before + 1
    result = jobs.rebuild_changed(runtime, *sent[0])
    assert result["errors"] == [] and result["updated"] == 2
    with runtime.database.session() as session:
        after = changes.freshness(session, APP, "summary", p)
        item = get_item(session, APP, "summary", p)
    assert not after.pending and after.built_at == item.updated_at
    assert follow(app) == set()


def test_a_change_during_a_rebuild_leaves_it_pending(app):
    runtime = app["runtime"]
    p = project_of(app, 1)
    with app["Session"].begin() as session:
        session.get(Product, 1).price = 1
    follow(app)
    with runtime.database.engine.connect() as conn:
        started = changes.now_ms(conn)
    time.sleep(0.01)
    with app["Session"].begin() as session:
        session.get(Product, 1).price = 2  # after the rebuild started: it may not see it
    follow(app)
    with runtime.database.engine.begin() as conn:
        changes.built(conn, p, APP, None, started, 0, 0)
    assert follow(app) == {(p, APP, "summary"), (p, APP, "by_category")}


def test_debounce_bounds(database):
    """A burst is one due time; the next waits `every` after the last start."""
    engine = database.engine
    scope = [("p1", APP, "summary")]
    with engine.begin() as conn:
        changes.mark(conn, scope, 1_000, 500, 5_000)
        changes.mark(conn, scope, 1_200, 500, 5_000)  # no later: the burst's first sets it
        due = conn.execute(sa.select(cache_changes.c.due_ms)).scalar_one()
        assert due == 1_500
        assert changes.claim_due(conn, 1_499, 60_000) == []
        assert changes.claim_due(conn, 1_500, 60_000) == [("p1", APP, "summary")]
        changes.mark(conn, scope, 1_700, 500, 5_000)  # while the rebuild runs
        changes.built(conn, "p1", APP, ["summary"], 1_600, 500, 5_000)
        due = conn.execute(sa.select(cache_changes.c.due_ms)).scalar_one()
        assert due == 6_600  # at most once per `every`: the last start + 5 s
        changes.built(conn, "p1", APP, ["summary"], 6_600, 500, 5_000)
        assert conn.execute(sa.select(cache_changes.c.due_ms)).scalar_one() is None
        changes.mark(conn, scope, 7_000, 500, 5_000)  # quiet since: delay, then `every`
        assert conn.execute(sa.select(cache_changes.c.due_ms)).scalar_one() == 11_600


def test_the_cursor_moves_only_from_where_it_was(app):
    """Two followers race on the cursor: the one whose `before` is stale moves nothing
    (its marks roll back with it) and reads again."""
    runtime = app["runtime"]
    with runtime.database.engine.begin() as conn:
        cursor = changes.read_cursor(conn, CURSOR)[0]
        assert changes.move_cursor(conn, CURSOR, cursor, "999", None)
        assert not changes.move_cursor(conn, CURSOR, cursor, "1000", None)
        assert not changes.move_cursor(conn, CURSOR, None, "1", None)  # no second first pass
        conn.rollback()


def test_a_worker_with_a_misdeclared_plugin_refuses_to_start_with_one_line(tmp_path):
    """Declarations are checked at start-up: an unknown column is one line naming the
    plugin, the item and the column, and the worker exits."""
    from tests.test_cli import run_cli

    env = make_env(tmp_path, models="demo.models,tests.data_driven_bad", redis_url="off")
    done = run_cli(env, "worker", timeout=60)
    assert done.returncode != 0, done.stdout
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    [line] = [x for x in done.stderr.splitlines() if "misdeclared" in x]
    assert "products has no column 'project_id'" in line and "'total'" in line


def test_a_send_that_fails_leaves_the_rebuild_due_for_the_next_pass(app):
    """A broker that refuses the task: nothing is lost, the scope is sent once it answers."""
    from cachework.errors import TransientError

    follower = app["follower"]
    p = project_of(app, 1)
    with app["Session"].begin() as session:
        session.get(Product, 1).price = 77
    follow(app)

    def refuse(*_args) -> None:
        raise ConnectionError("broker down")

    follower.send = refuse
    with pytest.raises(TransientError, match="broker down"):
        follower.dispatch_once()
    follower.send = app["sent"]
    assert follower.dispatch_once() == 1
    assert app["sent"] == [(p, APP, ["by_category", "summary"])]


def test_a_log_that_lost_entries_marks_every_declared_item(app, database):
    """Entries trimmed past the follower's place may have held changes: every declared
    item of every project is marked, never a missed rebuild."""
    from cachework.cache.invalidation import DatabaseLog

    with app["Session"].begin() as session:
        session.get(Product, 1).price = 2
    follow(app)  # the follower's place is now an entry of the log
    with app["runtime"].database.engine.begin() as conn:
        conn.execute(sa.delete(cache_changes))
    for price in (3, 4, 5):
        with app["Session"].begin() as session:
            session.get(Product, 1).price = price
    log = DatabaseLog(database.engine)
    assert wait_until(lambda: outbox_count(database.engine) == 0)
    log.trim(1)  # the first two changes' entries are gone, unread
    every = {(p, APP, n) for p in app["projects"] for n in ("summary", "by_category")}
    assert follow(app) == every
    assert app["follower"].stats["lost"] == 1


def test_a_follower_before_initdb_waits_for_the_tables_with_one_warning(tmp_path, caplog):
    """A worker may start before `cachework initdb`: no traceback, one warning, no raise."""
    from cachework.cache.invalidation import DatabaseLog
    from cachework.cache.items.projects import ProjectSource
    from cachework.cache.items.reads import ItemReads

    engine = sa.create_engine(f"sqlite:///{tmp_path / 'empty.db'}")
    follower = ChangeFollower(
        engine,
        DatabaseLog(engine),
        ItemReads(ProjectSource.off()),
        Sent(),
        delay=0,
        every=0,
        resend=60,
    )
    follower._stop.set()  # the wait after the warning returns at once
    try:
        follower.on_iteration()
        follower.on_iteration()
    finally:
        engine.dispose()
    warned = [r for r in caplog.records if "tables are missing" in r.getMessage()]
    assert len(warned) == 1 and warned[0].exc_info is None


def test_a_plugin_that_raises_keeps_its_changes_pending(app, monkeypatch):
    """Its items unwritten, its scope stays pending (sent again after the resend time)
    rather than marked rebuilt; a later rebuild that works clears it."""
    from demo.plugin import InventoryPlugin

    runtime = app["runtime"]
    p = project_of(app, 1)
    with app["Session"].begin() as session:
        session.get(Product, 1).price = 9
    follow(app)
    app["follower"].dispatch_once()

    def fail(self, store, session, project=None, name=None) -> None:
        raise RuntimeError("the plugin's bug")

    with monkeypatch.context() as patched:
        patched.setattr(InventoryPlugin, "update_cache", fail)
        result = jobs.rebuild_changed(runtime, *app["sent"][0])
    assert result["updated"] == 0 and "the plugin's bug" in result["errors"][0]
    assert follow(app) == {(p, APP, "summary"), (p, APP, "by_category")}
    assert jobs.rebuild_changed(runtime, *app["sent"][0])["errors"] == []
    assert follow(app) == set()
