"""A row with an id the database log never handed out (issue 18, item 6).

GENERATED ALWAYS let `OVERRIDING SYSTEM VALUE` and `COPY` through on PostgreSQL, and an
UPDATE could move a SQLite row's id above its AUTOINCREMENT counter: the database now
refuses both (migration 0005). Where its triggers do not run (PostgreSQL with
`session_replication_role = replica`: a restore, a logical-replication subscriber; a
SQLite log whose triggers were dropped), readers still never follow such an id. Whatever
the order (forged before the reader starts, before or after its first read, under a
running listener), an event published after the forged row reaches the reader, whose
cursor and head never take the forged id; the forged row itself is applied once, as an
entry that cannot be trusted (its table whole)."""

from __future__ import annotations

import psycopg
import pytest
import sqlalchemy as sa

from cachework.cache.invalidation import DatabaseLog, Listener, Tracker, publish
from cachework.cache.invalidation.db_log import _PG_STATE
from cachework.cache.invalidation.events import id_key
from cachework.schema import SQLITE_FIXED_IDS, SQLITE_TRIGGERS
from tests.invalidation_helpers import FakeTarget, LoadedTarget, wait_until

FORGED = '{"v":1,"table":"categories","keys":[7]}'
METHODS = {"postgresql": ("overriding", "copy"), "sqlite": ("update", "untriggered")}


def _seq(conn: sa.Connection) -> int:
    return conn.execute(
        sa.text("SELECT seq FROM sqlite_sequence WHERE name = 'invalidation_log'")
    ).scalar_one()


def forge(engine: sa.Engine, method: str, data: str = FORGED) -> int | None:
    """Put a row with an id of its own, far above every id handed out; returns that id,
    or None where the database made it an id of its own (SQLite's counter moved past
    it: later ids come after it, so following it skips nothing). The database's refusal
    is bypassed as a restore or a replica would (PostgreSQL's triggers off; SQLite's
    dropped)."""
    with engine.begin() as conn:
        top = conn.execute(sa.text("SELECT coalesce(max(id), 0) FROM invalidation_log")).scalar()
        forged = max(9_000_000_000_000, top + 1)
        if engine.dialect.name == "postgresql":
            conn.execute(sa.text("SET LOCAL session_replication_role = replica"))
        else:
            for name in (*SQLITE_TRIGGERS, *SQLITE_FIXED_IDS):
                conn.execute(sa.text(f"DROP TRIGGER IF EXISTS {name}"))
        if method == "overriding":
            conn.execute(
                sa.text(
                    "INSERT INTO invalidation_log (id, data) OVERRIDING SYSTEM VALUE "
                    "VALUES (:id, :data)"
                ),
                {"id": forged, "data": data},
            )
        elif method == "copy":
            raw = conn.connection.driver_connection
            sql = "COPY invalidation_log (id, data) FROM STDIN"
            with raw.cursor() as cursor, cursor.copy(sql) as copy:
                copy.write_row((forged, data))
        elif method == "update":  # a new row's id moved above the counter
            forged = _seq(conn) + 10**12
            conn.execute(sa.text("INSERT INTO invalidation_log (data) VALUES (:d)"), {"d": data})
            conn.execute(
                sa.text("UPDATE invalidation_log SET id = :id WHERE id = :seq"),
                {"id": forged, "seq": _seq(conn)},
            )
        else:  # an explicit id
            forged = _seq(conn) + 10**12
            conn.execute(
                sa.text("INSERT INTO invalidation_log (id, data) VALUES (:id, :data)"),
                {"id": forged, "data": data},
            )
            return None if _seq(conn) >= forged else forged
    return forged


@pytest.fixture(params=[0, 1], ids=["first", "second"])
def method(request, database) -> str:
    return METHODS[database.engine.dialect.name][request.param]


@pytest.fixture
def log(database) -> DatabaseLog:
    return DatabaseLog(database.engine, maxlen=1000, poll_interval=0.01)


def _rename_event(log: DatabaseLog) -> str:
    return publish("categories", [1], log=log)


def _assert_follows(tracker: Tracker, event_id: str, forged: int) -> None:
    assert ("categories", [1]) in tracker.target.invalidated
    assert tracker.cursor == event_id
    assert id_key(tracker.log.state().head) == id_key(event_id)


def test_forged_before_the_reader_starts(log, database, method):
    publish("categories", [5], log=log)
    forged = forge(database.engine, method)
    tracker = Tracker(FakeTarget(), log)
    tracker.sync()  # adopts the head: never the forged id
    assert forged is None or id_key(tracker.cursor)[0] < forged
    event_id = _rename_event(log)
    tracker.sync()
    _assert_follows(tracker, event_id, forged)


def test_forged_before_the_first_read_of_a_fresh_log(log, database, method):
    tracker = Tracker(LoadedTarget(), log)
    if method == "update":  # needs a row of its own to move; others forge into an empty log
        forged = forge(database.engine, method)
        tracker.sync()
    else:
        tracker.sync()
        forged = forge(database.engine, method)
    event_id = _rename_event(log)
    tracker.sync()
    _assert_follows(tracker, event_id, forged)


def test_forged_after_the_first_read_then_events_keep_coming(log, database, method):
    tracker = Tracker(FakeTarget(), log)
    tracker.sync()
    publish("categories", [2], log=log)
    tracker.sync()
    forged = forge(database.engine, method)
    tracker.poll()  # (on SQLite, the next insert moves the counter past a moved id)
    for _ in range(3):  # several reads: the forged row is applied once, never followed
        event_id = _rename_event(log)
        tracker.poll()
        _assert_follows(tracker, event_id, forged)
    stats = tracker.stats
    foreign = 0 if method == "untriggered" else 1  # SQLite moved its counter: a normal id
    assert stats["foreign"] == stats["malformed"] == foreign
    assert stats["drops"] == 0 and stats["gaps"] == 0


def test_forged_under_a_running_listener(log, database, method):
    tracker = Tracker(FakeTarget(), log)
    listener = Listener(tracker, log, block=0.01).start()
    try:
        wait_until(lambda: tracker.stats["connected"], timeout=5)
        publish("categories", [2], log=log)
        forged = forge(database.engine, method)
        event_id = _rename_event(log)
        wait_until(lambda: tracker.cursor == event_id, timeout=5)
        _assert_follows(tracker, event_id, forged)
    finally:
        assert listener.stop()


def test_forged_row_is_applied_once_as_its_table_whole(log, database, method):
    tracker = Tracker(FakeTarget(), log)
    tracker.sync()
    publish("categories", [2], log=log)
    forge(database.engine, method)
    tracker.poll()
    tracker.poll()
    assert tracker.target.invalidated.count(("categories", None)) == (
        0 if method == "untriggered" else 1
    )
    if method == "untriggered":  # an id the counter now covers: applied as the event it is
        assert ("categories", [7]) in tracker.target.invalidated


def test_forged_row_naming_no_table_drops_every_cached_table_once(log, database):
    tracker = Tracker(FakeTarget(), log)
    tracker.sync()
    publish("categories", [2], log=log)
    forge(database.engine, METHODS[database.engine.dialect.name][0], data="{not json")
    tracker.poll()
    tracker.poll()
    assert len(tracker.target.dropped) == 1
    assert "never handed out" in tracker.target.dropped[0]


def test_a_cursor_beyond_the_sequence_is_a_gap(log, database):
    """A reader that followed a forged id before this fix (or a sequence set back) would
    miss every later event: the log reports a gap, the tracker drops and resumes."""
    tracker = Tracker(FakeTarget(), log)
    tracker.sync()
    publish("categories", [2], log=log)
    tracker.sync()
    forged = forge(database.engine, METHODS[database.engine.dialect.name][0])
    tracker.target.cursor = str(forged)
    tracker.poll()
    assert tracker.stats["gaps"] == 1 and len(tracker.target.dropped) == 1
    event_id = _rename_event(log)
    tracker.poll()
    _assert_follows(tracker, event_id, forged)


def test_trim_keeps_the_newest_rows_the_log_handed_out(log, database):
    ids = [publish("categories", [k], log=log) for k in range(1, 6)]
    forge(database.engine, METHODS[database.engine.dialect.name][0])
    log.trim(3)
    batch = log.read(ids[2])
    assert not batch.gap and [i for i, _ in batch.entries] == ids[3:]


def test_forged_row_in_a_real_cached_table_process(seeded_runtime, database, method):
    """A web process's runtime and registry: reads after a rename published after the
    forged row are fresh, whether the row came before the runtime started or after."""
    runtime, log = seeded_runtime
    registry = runtime.registry
    assert registry.table("categories").get(1)["name"] == "Tools"
    forge(database.engine, method)
    runtime.start()
    try:
        for name in ("Renamed", "Again"):
            _rename(database.engine, name)
            event_id = publish("categories", [1], log=log)
            runtime.wait_for(event_id, timeout=5)
            assert registry.table("categories").get(1)["name"] == name
        forge(database.engine, method, data='{"v":1,"table":"categories","keys":[2]}')
        _rename(database.engine, "Third")
        runtime.wait_for(publish("categories", [1], log=log), timeout=5)
        assert registry.table("categories").get(1)["name"] == "Third"
    finally:
        runtime.stop()


@pytest.fixture
def seeded_runtime(database, runtime):
    from demo.seed import seed

    with database.session() as session:
        seed(session, projects=1, products=3)
    return runtime, DatabaseLog(database.engine)


def _rename(engine: sa.Engine, name: str) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE categories SET name = :n WHERE id = 1"), {"n": name})


# --- the database refuses them ------------------------------------------------------------

REFUSED = "invalidation_log id=|ids come from its own sequence only"
# COPY runs on the driver's own cursor: its error is the driver's
REFUSALS = (sa.exc.DBAPIError, psycopg.Error)


def _attempt(engine: sa.Engine, method: str, offset: int = 0) -> None:
    """`method`'s forged write (id 9e12 + `offset`) without any bypass."""
    forged = 9_000_000_000_000 + offset
    with engine.begin() as conn:
        if method == "overriding":
            conn.execute(
                sa.text(
                    "INSERT INTO invalidation_log (id, data) OVERRIDING SYSTEM VALUE "
                    "VALUES (:id, :d)"
                ),
                {"id": forged, "d": FORGED},
            )
        elif method == "copy":
            raw = conn.connection.driver_connection
            sql = "COPY invalidation_log (id, data) FROM STDIN"
            with raw.cursor() as cursor, cursor.copy(sql) as copy:
                copy.write_row((forged, FORGED))
        elif method == "update":
            conn.execute(
                sa.text(
                    "UPDATE invalidation_log SET id = id + 1000000000000 "
                    "WHERE id = (SELECT max(id) FROM invalidation_log)"
                )
            )
        else:
            conn.execute(
                sa.text("INSERT INTO invalidation_log (id, data) VALUES (:id, :d)"),
                {"id": forged * 1000, "d": FORGED},
            )


def test_the_database_refuses_an_id_its_sequence_did_not_hand_out(log, database, method):
    ids = [publish("categories", [k], log=log) for k in range(3)]
    with pytest.raises(REFUSALS, match=REFUSED) as caught:
        _attempt(database.engine, method)
    if database.engine.dialect.name == "postgresql":
        assert "id=9000000000000 was not handed out by its sequence" in str(caught.value)
    with database.engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT id FROM invalidation_log ORDER BY id")).scalars()
        assert [str(i) for i in rows] == ids  # nothing changed
    assert int(publish("categories", [4], log=log)) == int(ids[-1]) + 1


def test_the_database_refuses_them_for_a_role_that_may_only_insert(pg_url):
    """The check reads the sequence as the function's owner: a role granted the log's
    table alone (no right to read its sequence) appends and reads, and is refused a
    forged id."""
    import uuid

    from tests.conftest import _database

    role = f"cw_forge_{uuid.uuid4().hex[:8]}"
    gen = _database(pg_url)
    admin = next(gen).engine
    try:
        with admin.begin() as conn:
            conn.execute(sa.text(f"CREATE ROLE {role}"))
            conn.execute(sa.text(f"GRANT USAGE ON SCHEMA public TO {role}"))
            conn.execute(sa.text(f"GRANT SELECT, INSERT ON invalidation_log TO {role}"))
        with admin.begin() as conn:
            conn.execute(sa.text(f"SET LOCAL ROLE {role}"))
            conn.execute(sa.text("INSERT INTO invalidation_log (data) VALUES ('{}')"))
            assert conn.execute(sa.text(_HEAD_AS_READER)).scalar() == 1
        with pytest.raises(sa.exc.DBAPIError, match="was not handed out"), admin.begin() as conn:
            conn.execute(sa.text(f"SET LOCAL ROLE {role}"))
            conn.execute(
                sa.text(
                    "INSERT INTO invalidation_log (id, data) OVERRIDING SYSTEM VALUE "
                    "VALUES (9000000000000, '{}')"
                )
            )
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f"DROP OWNED BY {role}"))
            conn.execute(sa.text(f"DROP ROLE {role}"))
        gen.close()


# What DatabaseLog.state() asks, as that role: no right to the sequence, ids trusted.
_HEAD_AS_READER = str(_PG_STATE.compile(compile_kwargs={"literal_binds": True})).replace(
    "SELECT 'invalidation_log'::regclass::oid AS oid, b.bound, ", "SELECT "
)


def test_0005_adds_the_refusal_to_an_older_log_and_takes_it_back(any_db_url):
    from alembic import command

    from cachework import migrate

    engine = sa.create_engine(any_db_url, poolclass=sa.pool.NullPool)
    method = METHODS[engine.dialect.name][0]
    log = DatabaseLog(engine)
    try:
        with engine.begin() as conn:
            command.upgrade(migrate.config(conn), "0004")
        for k in range(3):
            publish("categories", [k], log=log)
        _attempt(engine, method)  # taken at 0004
        migrate.upgrade(engine)
        assert migrate.state(engine).current and migrate.differences(engine) == []
        with pytest.raises(REFUSALS, match=REFUSED):
            _attempt(engine, method)
        tracker = Tracker(FakeTarget(), log)
        tracker.sync()  # the row forged at 0004 stays; readers do not follow it
        event_id = publish("categories", [1], log=log)
        tracker.sync()
        assert tracker.cursor == event_id
        with engine.begin() as conn:
            command.downgrade(migrate.config(conn), "0004")
        _attempt(engine, method, offset=1)
    finally:
        engine.dispose()
