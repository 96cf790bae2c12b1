"""Automatic invalidation in one process: ORM flushes and ORM-enabled bulk statements write
their invalidation into the outbox in the writer's transaction (SQLite and PostgreSQL);
the PostgreSQL triggers do the same for raw SQL; a hypothesis run of random flushes
against a reference model of what must be invalidated."""

from __future__ import annotations

import sqlalchemy as sa
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cachework import database as db
from cachework.cache.invalidation import decode_event, track
from cachework.cache.invalidation import triggers as db_triggers
from cachework.cache.invalidation.tracking import Dependency, dependencies, source_dependencies
from cachework.cache.tables.full_table import FullTableCache
from cachework.cache.tables.indexes import PrimaryKey, Unique
from cachework.cache.tables.registry import Registry
from cachework.cache.tables.source import SelectSource
from cachework.cache.tables.table import CachedTable
from cachework.schema import invalidation_outbox
from demo.models import Category, Product
from tests.conftest import MODELS, make_env

DEPS = {"categories": {"categories": "id"}, "by_code": {"categories": "code"}}


def by_code(engine: sa.Engine) -> CachedTable:
    """Categories cached with the code as primary key (a keyed dependency on `code`)."""
    source = SelectSource(engine, sa.select(Category.__table__))
    return CachedTable([PrimaryKey("code"), Unique("id")], source, name="by_code")


def registry_of(engine: sa.Engine) -> Registry:
    factories = {
        "categories": lambda e: FullTableCache(e, Category, key_column="code", name="categories"),
        "by_code": by_code,
    }
    return Registry(factories, engine)


def take_outbox(engine: sa.Engine) -> list:
    """The outbox's events (oldest first), removed."""
    with engine.begin() as conn:
        rows = conn.execute(
            sa.select(invalidation_outbox.c.data).order_by(invalidation_outbox.c.id)
        ).all()
        conn.execute(invalidation_outbox.delete())
    return [decode_event(row.data) for row in rows]


def keys_of(events: list, table: str) -> set | None:
    """Every key the events name for `table` (None: one of them names the whole table)."""
    out: set = set()
    for event in events:
        if event.table != table:
            continue
        if event.keys is None:
            return None
        out |= set(event.keys)
    return out


def apply(registry: Registry, events: list) -> None:
    for event in events:
        registry.invalidate(event.table, None if event.keys is None else list(event.keys))


def seed(database: db.Database, count: int = 10) -> None:
    with database.session() as session:
        session.add_all(Category(id=i, code=f"c{i}", name=f"n{i}") for i in range(1, count + 1))
    take_outbox(database.engine)


def test_dependencies_are_derived_from_the_sources(database):
    registry = registry_of(database.engine)
    assert source_dependencies("categories", registry.table("categories")) == [
        Dependency("categories", "categories", "id")
    ]
    assert source_dependencies("by_code", registry.table("by_code")) == [
        Dependency("by_code", "categories", "code")
    ]
    joined = sa.select(Product.__table__, Category.code.label("category_code")).join(
        Category, Product.category_id == Category.id
    )
    table = CachedTable([PrimaryKey("id")], SelectSource(database.engine, joined), name="p")
    assert sorted(source_dependencies("p", table), key=lambda d: d.base) == [
        Dependency("p", "categories", None),  # a joined table: the whole cached table
        Dependency("p", "products", "id"),
    ]
    assert dependencies({"x": {"categories": None}}) == (Dependency("x", "categories", None),)


def test_a_transaction_writes_one_event_per_cached_table_only_if_it_commits(database):
    tracking = track(database.sessionmaker, DEPS)
    try:
        with database.session() as session:
            session.add_all(Category(id=i, code=f"c{i}", name="n") for i in range(1, 11))
        events = take_outbox(database.engine)
        assert [(e.table, set(e.keys)) for e in events] == [
            ("categories", set(range(1, 11))),
            ("by_code", {f"c{i}" for i in range(1, 11)}),
        ]  # ten rows, one flush: one event per cached table
        with database.session() as session:
            rows = session.scalars(sa.select(Category).where(Category.id <= 3)).all()
            rows[0].name = "renamed"
            rows[1].code = "moved"
            session.delete(rows[2])
        events = take_outbox(database.engine)
        assert len(events) == 2
        assert keys_of(events, "categories") == {1, 2, 3}
        assert keys_of(events, "by_code") == {"c1", "c2", "moved", "c3"}

        with database.session() as session:  # three flushes, one transaction
            for i in (4, 5, 6):
                session.get(Category, i).name = "flushed"
                session.flush()
            count = sa.select(sa.func.count()).select_from(invalidation_outbox)
            assert session.execute(count).scalar_one() == 0  # kept until the commit
        events = take_outbox(database.engine)
        assert [(e.table, set(e.keys)) for e in events] == [
            ("categories", {4, 5, 6}),
            ("by_code", {"c4", "c5", "c6"}),
        ]

        session = database.sessionmaker()
        try:
            session.get(Category, 4).name = "never"
            session.add(Category(id=99, code="c99", name="never"))
            session.flush()
            session.rollback()  # the keys go with the transaction
            session.get(Category, 7).name = "next"  # a new transaction on the connection
            session.commit()
        finally:
            session.close()
        events = take_outbox(database.engine)
        assert keys_of(events, "categories") == {7} and keys_of(events, "by_code") == {"c7"}
        assert tracking.stats["events"] == 8
    finally:
        tracking.stop()
    with database.session() as session:  # stopped: nothing tracked any more
        session.get(Category, 4).name = "untracked"
    assert take_outbox(database.engine) == []


def test_a_changed_index_value_invalidates_lookups_by_old_and_new_value(database):
    seed(database)
    registry = registry_of(database.engine)
    full, coded = registry.table("categories"), registry.table("by_code")
    assert full.by_cache_key("c5")[0]["id"] == 5 and coded.get("c5")["id"] == 5
    assert full.by_cache_key("new5") == (None, False) and coded.get("new5") is None
    tracking = track(database.sessionmaker, DEPS)
    try:
        with database.session() as session:
            session.get(Category, 5).code = "new5"
        events = take_outbox(database.engine)
        # Keyed by id: the row's primary key (old and new code are the same record); keyed
        # by code: both the old and the new value.
        assert keys_of(events, "categories") == {5}
        assert keys_of(events, "by_code") == {"c5", "new5"}
        apply(registry, events)
        assert full.by_cache_key("c5") == (None, False)
        assert full.by_cache_key("new5")[0]["id"] == 5
        assert full.by_id(5)["code"] == "new5"
        assert coded.get("c5") is None and coded.get("new5")["id"] == 5
    finally:
        tracking.stop()


def test_bulk_statements_use_returning_else_the_whole_table(database, monkeypatch):
    seed(database)
    tracking = track(database.sessionmaker, DEPS)
    try:
        with database.session() as session:
            result = session.execute(
                sa.update(Category).where(Category.id <= 3).values(name="bulk")
            )
            assert result.rowcount == 3  # the caller's result is unchanged
            session.execute(sa.delete(Category).where(Category.id == 10))
        events = take_outbox(database.engine)
        assert [(e.table, set(e.keys)) for e in events] == [
            ("categories", {1, 2, 3, 10}),
            ("by_code", {"c1", "c2", "c3", "c10"}),
        ]  # two statements, one transaction
        with database.session() as session:  # sets a keyed column: old values unknown
            session.execute(sa.update(Category).where(Category.id == 4).values(code="x4"))
        events = take_outbox(database.engine)
        assert keys_of(events, "categories") == {4} and keys_of(events, "by_code") is None
        with database.session() as session:  # bulk insert and bulk update by primary key
            session.execute(sa.insert(Category), [{"id": 50, "code": "c50", "name": "x"}])
            session.execute(sa.update(Category), [{"id": 50, "name": "y"}])
        events = take_outbox(database.engine)
        assert keys_of(events, "categories") == {50} and keys_of(events, "by_code") is None

        dialect = database.engine.dialect
        monkeypatch.setattr(dialect, "update_returning", False)
        with database.session() as session:  # a database without RETURNING: never silent
            session.execute(sa.update(Category).where(Category.id == 5).values(name="z"))
        events = take_outbox(database.engine)
        assert keys_of(events, "categories") is None and keys_of(events, "by_code") is None

        session = database.sessionmaker()
        try:
            session.execute(sa.update(Category).values(name="rolled back"))
            session.rollback()
        finally:
            session.close()
        assert take_outbox(database.engine) == []
    finally:
        tracking.stop()


def test_an_explicit_publish_beside_tracking_is_applied_twice_harmlessly(database):
    from cachework.cache.invalidation import publish

    seed(database)
    registry = registry_of(database.engine)
    full = registry.table("categories")
    assert full.by_id(2)["name"] == "n2"
    tracking = track(database.sessionmaker, DEPS)
    try:
        with database.session() as session:
            session.get(Category, 2).name = "both"
            publish("categories", [2], session=session)
        events = take_outbox(database.engine)
        assert [e.table for e in events].count("categories") == 2
        apply(registry, events)
        assert full.by_id(2)["name"] == "both"
        assert full.stats()["refreshes"] == 1  # both marks were pending: one refresh
    finally:
        tracking.stop()


# --- where the transaction ends --------------------------------------------------------


def test_savepoints_autocommit_and_an_outer_transaction(database):
    """A rollback to a savepoint keeps its keys (over-invalidating is harmless); an
    AUTOCOMMIT session writes at each flush; a session joined to the app's own outer
    transaction writes when that one commits and nothing when it rolls back."""
    seed(database)
    tracking = track(sa.orm.Session, DEPS)  # every Session, as a Session class
    try:
        with sa.orm.Session(database.engine) as session, session.begin():
            session.get(Category, 1).name = "kept"
            nested = session.begin_nested()
            session.get(Category, 2).name = "undone"
            session.flush()
            nested.rollback()
        assert keys_of(take_outbox(database.engine), "categories") == {1, 2}

        autocommit = database.engine.execution_options(isolation_level="AUTOCOMMIT")
        with sa.orm.Session(autocommit) as session:
            session.get(Category, 3).name = "at once"
            session.flush()  # each statement commits by itself: so does its event
            assert keys_of(take_outbox(database.engine), "categories") == {3}
            session.commit()
        assert take_outbox(database.engine) == []

        for outcome in ("rollback", "commit"):
            with database.engine.connect() as conn:
                outer = conn.begin()
                with sa.orm.Session(conn) as s:
                    s.get(Category, 4).name = outcome
                    s.commit()  # joined the app's transaction: that one decides
                getattr(outer, outcome)()
            events = take_outbox(database.engine)
            assert events == [] if outcome == "rollback" else keys_of(events, "categories") == {4}
    finally:
        tracking.stop()


def _refuse_bad_names_at_commit(engine: sa.Engine) -> None:
    """A check the server runs at COMMIT: a deferred trigger refusing the name 'bad'."""
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "CREATE FUNCTION refuse_bad() RETURNS trigger AS $$ BEGIN "
                "IF NEW.name = 'bad' THEN RAISE EXCEPTION 'refused at commit'; END IF; "
                "RETURN NEW; END $$ LANGUAGE plpgsql"
            )
        )
        conn.execute(
            sa.text(
                "CREATE CONSTRAINT TRIGGER refuse_bad AFTER UPDATE ON categories "
                "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION refuse_bad()"
            )
        )


def _commit_refused_then_good(database: db.Database) -> None:
    """A commit the server refuses writes no event; the same session then commits."""
    session = database.sessionmaker()
    try:
        session.get(Category, 2).name = "bad"
        try:
            session.commit()
        except sa.exc.DBAPIError as exc:
            assert "refused at commit" in str(exc)
        else:
            raise AssertionError("the commit should have failed")
        session.rollback()
        assert take_outbox(database.engine) == []  # no event for what never committed
        session.get(Category, 2).name = "good"  # the session goes on
        session.commit()
    finally:
        session.close()


def test_postgresql_sends_the_event_with_the_commit(pg_database, monkeypatch):
    """psycopg: the outbox INSERT and the COMMIT are one query (the driver's commit finds
    the transaction already ended); a commit the server refuses leaves neither the change
    nor its event; keys with quotes, backslashes and percent signs arrive exactly."""
    database = pg_database
    seed(database)
    dialect = database.engine.dialect
    states = []
    do_commit = dialect.do_commit

    def spying(dbapi_connection):
        states.append(dbapi_connection.driver_connection.info.transaction_status.name)
        do_commit(dbapi_connection)

    monkeypatch.setattr(dialect, "do_commit", spying)
    tracking = track(database.sessionmaker, DEPS)
    odd = 'it\'s 100% \\ "quoted" ü'
    try:
        with database.session() as session:
            session.get(Category, 1).code = odd
        assert states == ["IDLE"]  # the server had committed already
        events = take_outbox(database.engine)
        assert keys_of(events, "by_code") == {"c1", odd}
        with database.session() as session:
            assert session.get(Category, 1).code == odd

        _refuse_bad_names_at_commit(database.engine)
        _commit_refused_then_good(database)
        assert keys_of(take_outbox(database.engine), "categories") == {2}
        with database.session() as session:
            assert session.get(Category, 2).name == "good"
    finally:
        tracking.stop()
        with database.engine.begin() as conn:
            conn.execute(sa.text("DROP TRIGGER IF EXISTS refuse_bad ON categories"))
            conn.execute(sa.text("DROP FUNCTION IF EXISTS refuse_bad()"))


# --- PostgreSQL triggers -----------------------------------------------------------------


def test_triggers_write_one_outbox_row_per_statement(pg_database, tmp_path, monkeypatch):
    engine = pg_database.engine
    seed(pg_database, 200)
    deps = dependencies(DEPS)
    assert db_triggers.install(engine, deps, max_keys=100) == ["categories"]
    try:
        [status] = db_triggers.status(engine, deps, max_keys=100)
        assert status.current and set(status.installed) == set(db_triggers.OPS)
        with engine.begin() as conn:
            conn.execute(sa.text("UPDATE categories SET name = 'raw' WHERE id <= 50"))
            conn.execute(sa.text("UPDATE categories SET code = 'r7' WHERE id = 7"))
            conn.execute(sa.text("UPDATE categories SET name = 'none' WHERE id < 0"))
        events = take_outbox(engine)
        assert [(e.table, set(e.keys)) for e in events] == [
            ("categories", set(range(1, 51))),
            ("by_code", {f"c{i}" for i in range(1, 51)}),
            ("categories", {7}),
            ("by_code", {"c7", "r7"}),
        ]  # one row per statement and cached table; none for a statement that touched none
        with engine.begin() as conn:  # more rows than max_keys: the whole table
            conn.execute(sa.text("UPDATE categories SET name = 'all'"))
        assert [(e.table, e.keys) for e in take_outbox(engine)] == [
            ("categories", None),
            ("by_code", None),
        ]
        with engine.begin() as conn:
            conn.execute(sa.text("DELETE FROM categories WHERE id = 3"))
            conn.execute(sa.text("INSERT INTO categories VALUES (300, 'c300', 'x')"))
            conn.rollback()
        assert take_outbox(engine) == []
        with engine.begin() as conn:
            conn.execute(sa.text("TRUNCATE categories CASCADE"))
        assert [e.keys for e in take_outbox(engine)] == [None, None]

        # The CLI: status of the declared cached tables (demo: categories by id).
        env = make_env(tmp_path, database_url=pg_database.url, redis_url="off")
        for name, value in env.items():
            if name.startswith("CACHEWORK_"):
                monkeypatch.setenv(name, value)
        from cachework.worker.cli import main

        runner = CliRunner()
        outdated = runner.invoke(main, ["triggers", "status"])
        assert outdated.exit_code == 1 and "outdated" in outdated.output
        installed = runner.invoke(main, ["triggers", "install"])
        assert installed.exit_code == 0, installed.output
        current = runner.invoke(main, ["triggers", "status"])
        assert current.exit_code == 0, current.output
        # The cached table and the demo plugin's items (demo/plugin.py `depends_on`).
        assert "categories -> categories, @items:categories: installed" in current.output
        assert "products -> @items:products.project_uuid: installed" in current.output
        removed = runner.invoke(main, ["triggers", "remove"])
        assert removed.exit_code == 0 and "categories" in removed.output
    finally:
        db_triggers.remove(engine)
    assert db_triggers.status(engine, deps)[0].installed == ()
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO categories VALUES (301, 'c301', 'x')"))
    assert take_outbox(engine) == []


def test_triggers_need_postgresql(sqlite_url):
    database = db.Database(sqlite_url)
    try:
        from cachework.errors import ConfigError

        try:
            db_triggers.install(database.engine, dependencies(DEPS))
        except ConfigError as exc:
            assert "PostgreSQL" in str(exc) and "sqlite" in str(exc)
        else:
            raise AssertionError("installed triggers on SQLite")
    finally:
        database.dispose()


# --- random flushes against a reference model --------------------------------------------

ops = st.lists(
    st.tuples(
        st.sampled_from(["insert", "name", "code", "id", "delete", "flush"]),
        st.integers(0, 1000),
    ),
    min_size=1,
    max_size=8,
)


def _write(
    session, rows: dict, op: str, pick: int, counter, touched_ids: set, touched_codes: set
) -> None:
    """One random ORM write (or a flush) in `session`, mirrored in `rows` (id -> code),
    the ids and codes it touches added to the touched sets."""
    live = sorted(rows)
    if op == "flush":
        session.flush()
        return
    if op == "insert" or not live:
        new_id, code = next(counter), f"k{next(counter)}"
        session.add(Category(id=new_id, code=code, name="n"))
        rows[new_id] = code
        touched_ids.add(new_id)
        touched_codes.add(code)
        return
    key = live[pick % len(live)]
    session.flush()  # a row added in this transaction is written first
    obj = session.get(Category, key)
    touched_ids.add(key)
    touched_codes.add(rows[key])
    if op == "name":
        obj.name = f"name{next(counter)}"
    elif op == "code":
        obj.code = rows[key] = f"k{next(counter)}"
        touched_codes.add(obj.code)
    elif op == "id":
        session.flush()  # a primary-key change flushed on its own
        obj.id = new_id = next(counter)
        rows[new_id] = rows.pop(key)
        touched_ids.add(new_id)
    else:
        session.delete(obj)
        del rows[key]


def _run_transaction(
    database: db.Database, model: dict, steps: list, commit: bool, counter
) -> tuple[dict, set, set]:
    """Apply `steps` in one session, then commit or roll back: the rows as the transaction
    left them (id -> code) and the ids and codes it touched."""
    rows = dict(model)
    touched_ids: set = set()
    touched_codes: set = set()
    session = database.sessionmaker()
    try:
        for op, pick in steps:
            _write(session, rows, op, pick, counter, touched_ids, touched_codes)
        if commit:
            session.commit()
        else:
            session.rollback()
    finally:
        session.close()
    return rows, touched_ids, touched_codes


def _check_cached_tables(full, coded, model: dict, seen_ids: set, seen_codes: set) -> None:
    """The cached tables agree with the committed rows for every id and code ever used."""
    by_code_model = {code: i for i, code in model.items()}
    for i in seen_ids:
        record = full.by_id(i)
        assert (record and record["code"]) == model.get(i) or (record is None and i not in model)
    for code in seen_codes:
        record = coded.get(code)
        assert (record["id"] if record else None) == by_code_model.get(code)
        found, _new = full.by_cache_key(code)
        assert (found["id"] if found else None) == by_code_model.get(code)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(st.lists(st.tuples(ops, st.booleans()), min_size=1, max_size=5))
def test_random_flushes_invalidate_exactly_what_the_reference_model_says(
    tmp_path_factory, transactions
):
    """Each transaction applies random ORM writes (with flushes between some of them), then
    commits or rolls back. The reference model knows the committed rows; a committed
    transaction's events must name exactly the ids and the old and new codes of the rows
    it touched, a rolled-back one nothing; and the cached tables, told only by those
    events, must agree with the database for every id and code ever used."""
    folder = tmp_path_factory.mktemp("flushes")
    database = db.Database(f"sqlite:///{folder / 'test.db'}")
    from cachework.worker.schema import create_tables

    create_tables(database.engine, MODELS)
    model = {i: f"c{i}" for i in range(1, 6)}  # id -> code, committed
    with database.session() as session:
        session.add_all(Category(id=i, code=c, name="n") for i, c in model.items())
    take_outbox(database.engine)
    registry = registry_of(database.engine)
    full, coded = registry.table("categories"), registry.table("by_code")
    full.by_id(1), coded.get("c1")  # loaded before any tracked write
    tracking = track(database.sessionmaker, DEPS)
    counter = iter(range(10_000, 100_000))
    seen_ids, seen_codes = set(model), set(model.values())
    try:
        for steps, commit in transactions:
            rows, touched_ids, touched_codes = _run_transaction(
                database, model, steps, commit, counter
            )
            events = take_outbox(database.engine)
            if not commit:
                assert events == []
                continue
            model = rows
            seen_ids |= touched_ids
            seen_codes |= touched_codes
            assert keys_of(events, "categories") == touched_ids
            assert keys_of(events, "by_code") == touched_codes
            apply(registry, events)
            _check_cached_tables(full, coded, model, seen_ids, seen_codes)
    finally:
        tracking.stop()
        database.dispose()
