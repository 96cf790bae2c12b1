"""The version importer against SQLite and PostgreSQL, checked against Continuum's ORM path."""

from __future__ import annotations

import re

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Session
from sqlalchemy_continuum import version_class

from cachework.errors import LockedError, NotFoundError, ValidationError
from cachework.importers.locking import LOCK_KEY
from cachework.importers.statistics import is_stale, refresh_stale_statistics
from cachework.importers.versions import ChangeLimitExceeded, import_versions
from tests.import_helpers import (
    MODELS,
    STEPS,
    VERSIONED,
    Category,
    LedgerEntry,
    OrderLine,
    Product,
    api_history,
    apply_orm,
    apply_sql,
    create_all,
    history,
    reference_database,
    seed_fixed,
    transactions,
)

ALL = MODELS.versioned


@pytest.fixture
def vdb(database):
    create_all(database)
    return database


def run(database, **kwargs):
    with database.session() as session:
        return import_versions(session, ALL, **kwargs)


def test_import_gives_the_history_continuums_orm_path_gives(vdb, tmp_path):
    with vdb.session() as session:
        seed_fixed(session)
    results = []
    for step in STEPS:
        with vdb.session() as session:
            apply_sql(session, step)
        counted = run(vdb, dry_run=True)  # counts first: the other path must agree
        results.append(run(vdb, user="ann", comment="step", remote_addr="10.0.0.1"))
        assert results[-1].models == counted.models
    in_sync = run(vdb)
    with reference_database(tmp_path) as ref:
        with ref.session() as session:
            seed_fixed(session)
        for step in STEPS:
            with ref.session() as session:
                apply_orm(session, step)
        with vdb.session() as imported, ref.session() as orm:
            for cls in VERSIONED:
                assert history(imported, cls) == history(orm, cls), cls.__name__
                assert api_history(imported, cls) == api_history(orm, cls), cls.__name__
            assert transactions(imported) == transactions(orm) == len(STEPS)
            # Deleted then re-created, read through Continuum's API: the delete version
            # is closed by the re-creation, which is the one open (current) version.
            versions = imported.get(Product, 3).versions.all()
            assert [v.operation_type for v in versions] == [0, 2, 0]
            assert versions[1].end_transaction_id == versions[2].transaction_id
            assert versions[2].end_transaction_id is None and versions[2].name == "Product 3 again"
            assert [v.operation_type for v in imported.get(LedgerEntry, 2).versions] == [0, 2, 0]

    first, second, third = (r.as_dict() for r in results)
    assert first["models"]["Product"] == {
        "created": 6, "updated": 0, "deleted": 0, "unchanged": 0, "skipped": 0, "repaired": 0,
    }  # fmt: skip
    assert {k: second["models"]["Product"][k] for k in ("updated", "deleted", "unchanged")} == {
        "updated": 2, "deleted": 1, "unchanged": 3,
    }  # fmt: skip
    assert {k: third["models"]["Product"][k] for k in ("created", "updated", "unchanged")} == {
        "created": 1, "updated": 1, "unchanged": 4,
    }  # fmt: skip
    assert third["models"]["OrderLine"]["created"] == 1
    assert third["models"]["LedgerEntry"] == {
        "created": 1, "updated": 0, "deleted": 0, "unchanged": 2, "skipped": 0, "repaired": 0,
    }  # fmt: skip
    order = list(first["models"])
    assert sorted(order) == ["Category", "LedgerEntry", "OrderLine", "Product"]
    assert order.index("Category") < order.index("Product")  # foreign keys: parents first
    assert third["models"]["OrderLine"]["unchanged"] == 2  # the excluded column changed
    # An in-sync run writes nothing at all, not even a transaction row.
    assert in_sync.transaction_id is None
    assert all(c.changes == 0 for c in in_sync.models.values())
    with vdb.session() as session:
        assert transactions(session) == len(STEPS)
        txn = session.get(version_class(Product).transaction.property.mapper.class_, 1)
        assert txn.remote_addr == "10.0.0.1"
        assert txn.meta == {"user": "ann", "comment": "step"}


def test_continuum_api_and_later_orm_edits_after_an_import(vdb):
    with vdb.session() as session:
        seed_fixed(session)
        apply_sql(session, STEPS[0])
    first = run(vdb).transaction_id
    with vdb.session() as session:
        product = session.get(Product, 1)
        assert [(v.operation_type, v.end_transaction_id) for v in product.versions] == [(0, None)]
        product.name = "edited through the ORM"
        line = session.get(OrderLine, (1, 1))
        line.note = "orm note"
    with vdb.session() as session:
        product = session.get(Product, 1)
        versions = product.versions.all()
        assert [v.operation_type for v in versions] == [0, 1]
        assert versions[0].transaction_id == first
        assert versions[0].end_transaction_id == versions[1].transaction_id
        assert versions[1].previous.transaction_id == first
        assert versions[0].next.name == "edited through the ORM"
        assert [v.note for v in session.get(OrderLine, (1, 1)).versions] == [None, "orm note"]
        session.delete(session.get(LedgerEntry, 1))
    # The import finds the ORM's history consistent and in sync with the live rows.
    again = run(vdb)
    assert again.transaction_id is None and again.warnings == []


def test_several_open_versions_are_reported_and_repaired(vdb, tmp_path):
    with vdb.session() as session:
        seed_fixed(session)
        apply_sql(session, STEPS[0])
    run(vdb)  # tx 1: every row has one open version
    table = version_class(Product).__table__
    with vdb.session() as session:
        # What a row-by-row importer leaves behind: product 3 deleted and re-created with
        # both versions left open, product 5 updated without closing its predecessor.
        session.execute(sa.text('INSERT INTO "transaction" (id) VALUES (2), (3)'))
        base = {c: v for c, v in session.execute(
            sa.select(table).where(table.c.id == 3)).mappings().one().items()}  # fmt: skip
        session.execute(sa.insert(table), [
            {**base, "transaction_id": 2, "operation_type": 2},
            {**base, "transaction_id": 3, "operation_type": 0},
        ])  # fmt: skip
        five = dict(session.execute(sa.select(table).where(table.c.id == 5)).mappings().one())
        session.execute(sa.insert(table), [{**five, "transaction_id": 2, "operation_type": 1}])
    report = run(vdb)
    assert report.inconsistent == {"Product": [3, 5]}
    assert "Product: 2 key(s) have several open versions" in report.warnings[0]
    assert report.transaction_id is None and report.repaired["Product"] == 0
    dry = run(vdb, repair=True, dry_run=True)
    assert dry.repaired["Product"] == 3
    with vdb.session() as session:
        assert [v for _op, _vals, v in history(session, Product)[(3,)]] == ["open"] * 3
    fixed = run(vdb, repair=True)
    assert fixed.repaired["Product"] == 3 and fixed.transaction_id is None
    assert run(vdb).warnings == []
    with reference_database(tmp_path) as ref:
        with ref.session() as session:
            seed_fixed(session)
            apply_orm(session, STEPS[0])
        with ref.session() as session:  # tx 2: delete 3, "update" 5 to the same values
            session.delete(session.get(Product, 3))
        with ref.session() as session:  # tx 3: re-create 3
            columns = [c.name for c in Product.__table__.c]
            session.add(Product(**{k: base[k] for k in columns}))
        with vdb.session() as imported, ref.session() as orm:
            got, want = history(imported, Product), history(orm, Product)
    assert got[(3,)] == want[(3,)]
    assert [(op, v) for op, _vals, v in got[(5,)]] == [(0, "next"), (1, "open")]


def test_dry_run_switches_and_limits_write_nothing(vdb):
    with vdb.session() as session:
        seed_fixed(session)
        apply_sql(session, STEPS[0])
    dry = run(vdb, dry_run=True)
    assert dry.dry_run and dry.transaction_id is None
    with pytest.raises(ChangeLimitExceeded, match="max_changes=5; nothing was written"):
        run(vdb, max_changes=5)
    with vdb.session() as session:
        assert transactions(session) == 0
        assert session.execute(sa.select(sa.func.count()).select_from(
            version_class(Product).__table__)).scalar_one() == 0  # fmt: skip
    real = run(vdb, max_changes=sum(c.changes for c in dry.models.values()))
    assert {n: c.as_dict() for n, c in real.models.items()} == {
        n: c.as_dict() for n, c in dry.models.items()
    }
    with vdb.session() as session:
        apply_sql(session, STEPS[1])
    partial = run(vdb, delete=False, update=False)
    assert partial.models["Product"].deleted == 0 and partial.models["Product"].updated == 0
    assert partial.models["Product"].skipped == 3
    assert partial.transaction_id is None  # nothing to create in step 2
    rest = run(vdb)
    assert rest.models["Product"].updated == 2 and rest.models["Product"].deleted == 1


def test_failure_in_the_second_model_writes_nothing(vdb):
    with vdb.session() as session:
        seed_fixed(session)
        apply_sql(session, STEPS[0])
        # A delete version already sitting on the id the next transaction will get makes
        # Product's INSERT fail after Category's versions were written.
        table = version_class(Product).__table__
        session.execute(sa.insert(table).values(
            id=5, sku="SKU-5", name="x", transaction_id=1, operation_type=2))  # fmt: skip
    with pytest.raises(sa.exc.IntegrityError):
        run(vdb, names=["Product", "Category"])
    with vdb.session() as session:
        assert transactions(session) == 0
        assert session.execute(sa.select(sa.func.count()).select_from(
            version_class(Category).__table__)).scalar_one() == 0  # fmt: skip
        assert [(op, v) for op, _vals, v in history(session, Product)[(5,)]] == [(2, "open")]


def test_progress_events_and_model_selection(vdb):
    with vdb.session() as session:
        seed_fixed(session)
        apply_sql(session, STEPS[0])
    events = []  # a dry run (or a limit) counts every model before anything is written
    result = run(vdb, names=["Product", "Category"], progress=events.append, dry_run=True)
    planned = events.pop(0)  # first: the rows each model will check (progress bars, ETA)
    assert planned["stage"] == "planned" and list(planned["rows"]) == ["Category", "Product"]
    assert [(e["model"], e["stage"]) for e in events] == [
        ("Category", "checking"), ("Category", "counted"),
        ("Product", "checking"), ("Product", "counted"),
    ]  # fmt: skip
    assert events[3]["created"] == 6 and events[3]["total"] == 2
    events = []  # a plain run writes model by model, counting from its writes
    result = run(vdb, names=["Product", "Category", "Product"], progress=events.append)
    assert list(result.models) == ["Category", "Product"]  # parents first, once each
    assert events.pop(0)["stage"] == "planned"
    assert [(e["model"], e["stage"]) for e in events] == [
        ("Category", "checking"), ("Category", "done"),
        ("Product", "checking"), ("Product", "done"),
    ]  # fmt: skip
    assert events[3]["created"] == 6 and events[3]["total"] == 2


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"names": ["Nope"]}, NotFoundError, "unknown versioned model 'Nope'; valid names: "
         "Category, LedgerEntry, OrderLine, Product"),
        ({"names": "Product"}, ValidationError, "models='Product' must be a list"),
        ({"names": []}, ValidationError, "models=[] names no model; pass None"),
        ({"names": ["Product", 1]}, ValidationError, "models: 1 is not a model name"),
        ({"create": None}, ValidationError, "create=None must be true or false"),
        ({"repair": 1}, ValidationError, "repair=1 must be true or false"),
        ({"max_changes": -1}, ValidationError, "max_changes=-1 must be 0 or more"),
        ({"max_changes": "10"}, ValidationError, "max_changes='10' must be a whole number"),
        ({"dry_run": "yes"}, ValidationError, "dry_run='yes' must be true or false"),
        ({"user": 7}, ValidationError, "user=7 must be a string"),
        ({"remote_addr": "x" * 51}, ValidationError, "longer than 50 characters"),
    ],
)  # fmt: skip
def test_bad_input_is_rejected_before_anything_is_written(vdb, kwargs, error, message):
    with vdb.session() as session:
        seed_fixed(session)
        apply_sql(session, STEPS[0])
    with pytest.raises(error, match=re.escape(message)):
        run(vdb, **kwargs)
    with vdb.session() as session:
        assert transactions(session) == 0


def test_session_already_in_a_transaction_is_refused(vdb):
    with vdb.session() as session:
        session.execute(sa.text("SELECT 1"))
        with pytest.raises(ValidationError, match="has not begun a transaction"):
            import_versions(session, ALL)


def test_two_imports_never_run_at_once(vdb):
    if vdb.engine.dialect.name == "postgresql":
        with vdb.engine.connect() as holder:
            holder.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": LOCK_KEY})
            with pytest.raises(LockedError, match="another version import is running"):
                run(vdb)
            holder.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": LOCK_KEY})
            holder.commit()
    else:
        impatient = sa.create_engine(vdb.url, connect_args={"timeout": 0.1})
        try:
            with vdb.engine.connect() as holder:
                holder.exec_driver_sql("BEGIN IMMEDIATE")
                with Session(impatient) as session, pytest.raises(LockedError):
                    import_versions(session, ALL)
                holder.rollback()
        finally:
            impatient.dispose()
    assert run(vdb).transaction_id is None  # the lock is free again


def test_a_second_import_during_a_running_one_is_refused_and_then_sees_its_commit(vdb):
    with vdb.session() as session:
        seed_fixed(session)
        apply_sql(session, STEPS[0])
    impatient = vdb.engine
    if vdb.engine.dialect.name == "sqlite":  # do not wait out the 30 s busy timeout
        impatient = sa.create_engine(vdb.url, connect_args={"timeout": 0.1})
    refused: list[Exception] = []

    def second_import(event: dict) -> None:
        if event["stage"] == "done" and not refused:
            with Session(impatient) as other, pytest.raises(LockedError) as caught:
                import_versions(other, ALL)
            refused.append(caught.value)

    try:
        first = run(vdb, progress=second_import)
        assert refused and first.transaction_id == 1
        # The lock is free again and the next import's snapshot includes the first's commit.
        with Session(impatient) as session:
            again = import_versions(session, ALL)
            session.commit()
        assert again.transaction_id is None
        assert all(c.changes == 0 for c in again.models.values())
    finally:
        if impatient is not vdb.engine:
            impatient.dispose()


@pytest.mark.parametrize(
    ("modified", "live", "stale"),
    [(0, 0, False), (50, 0, False), (51, 0, True), (150, 1000, False), (151, 1000, True)],
)
def test_statistics_are_stale_where_autovacuum_would_analyze(modified, live, stale):
    assert is_stale(modified, live) is stale


def test_an_import_analyzes_tables_a_bulk_load_left_stale(pg_url):
    """Bulk-loaded rows leave PostgreSQL's statistics stale (autovacuum is late, or off):
    the import analyzes those tables first, so its plans fit the real table sizes."""
    from cachework.database import Database

    database = Database(pg_url)  # closed connections: each backend flushes its counters
    database.engine.dispose()
    engine = sa.create_engine(pg_url, poolclass=sa.pool.NullPool)
    try:
        create_all(database)
        with engine.begin() as conn:
            conn.execute(sa.text("INSERT INTO projects (uuid, title) VALUES ('p1', 'P')"))
            conn.execute(sa.text(
                "INSERT INTO products (id, sku, name, price, project_uuid, active) "
                "SELECT g, 'SKU-' || g, 'P', 1.5, 'p1', true FROM generate_series(1, 500) g"
            ))  # fmt: skip

        def counters(table: str) -> tuple[int, object]:
            with engine.connect() as conn:
                return tuple(conn.execute(sa.text(
                    "SELECT n_mod_since_analyze, last_analyze FROM pg_stat_user_tables "
                    "WHERE relname = :t"), {"t": table}).one())  # fmt: skip

        assert counters("products")[0] >= 500  # stale: never analyzed since the load
        result = run(database, names=["Product"])
        assert result.models["Product"].created == 500
        _modified, analyzed_at = counters("products")
        assert analyzed_at is not None
        with engine.connect() as conn:  # the planner now knows the table's real size
            size = sa.text("SELECT reltuples FROM pg_class WHERE relname = 'products'")
            reltuples = conn.execute(size).scalar_one()
        assert reltuples == 500
        # The import analyzed only the key columns (the others' statistics are the app's):
        # PostgreSQL resets the change counter only on a full ANALYZE, which autovacuum
        # (or this call) still makes; after it there is nothing more to analyze.
        products = sa.Table("products", sa.MetaData())
        with database.session() as session:
            session.begin()
            assert refresh_stale_statistics(session, [products]) == ["products"]
        with database.session() as session:
            session.begin()
            assert refresh_stale_statistics(session, [products]) == []
    finally:
        engine.dispose()
        database.dispose()


def test_json_and_json_arrays_compare_as_jsonb_on_postgresql(pg_url):
    """PostgreSQL's json and json[] have no equality operator: the import compares them as
    jsonb (semantic equality, like Python's == on the loaded values)."""
    from sqlalchemy.dialects import postgresql

    from cachework.importers.versions import comparable

    table = sa.Table(
        "no_equality",
        sa.MetaData(),
        sa.Column("a", sa.JSON),
        sa.Column("b", sa.JSON),
        sa.Column("c", sa.ARRAY(sa.JSON)),
        sa.Column("d", sa.ARRAY(sa.JSON)),
    )
    engine = sa.create_engine(pg_url, poolclass=sa.pool.NullPool)
    try:
        with engine.begin() as conn:
            table.create(conn)
            conn.exec_driver_sql(
                "INSERT INTO no_equality VALUES "
                "('{\"k\": 1, \"j\": 2}', '{\"j\":2,\"k\":1}', "
                "ARRAY['[1, 2]'::json], ARRAY['[1,2]'::json])")  # fmt: skip
            plain = sa.select(table.c.a.is_distinct_from(table.c.b))
            with (
                pytest.raises(sa.exc.ProgrammingError, match="operator does not exist"),
                conn.begin_nested(),
            ):
                conn.execute(plain)
            dialect = engine.dialect
            differs = [
                comparable(x, x.type, dialect).is_distinct_from(comparable(y, y.type, dialect))
                for x, y in ((table.c.a, table.c.b), (table.c.c, table.c.d))
            ]
            assert conn.execute(sa.select(*differs)).one() == (False, False)
            assert isinstance(comparable(table.c.a, table.c.a.type, dialect).type, postgresql.JSONB)
    finally:
        engine.dispose()


class JSONish(sa.types.TypeDecorator):
    """An app's own JSON type (impl JSON)."""

    impl = sa.JSON
    cache_ok = True


class JSONText(sa.types.TypeDecorator):
    """SQLAlchemy-Utils' JSONType pattern: text, but `json` where the dialect has it."""

    impl = sa.UnicodeText
    cache_ok = True

    def load_dialect_impl(self, dialect: sa.Dialect) -> sa.types.TypeEngine:
        wanted = postgresql.JSON() if dialect.name == "postgresql" else sa.UnicodeText()
        return dialect.type_descriptor(wanted)


class Named(sa.types.UserDefinedType):
    """A PostgreSQL type SQLAlchemy has no class for, by name."""

    cache_ok = True

    def __init__(self, name: str) -> None:
        self.name = name

    def get_col_spec(self, **_kw: object) -> str:
        return self.name


JSON_DOMAIN = postgresql.DOMAIN("json_domain", sa.JSON())
# (type, equal values with different text, different values); the values are SQL literals
NO_EQUALITY = {
    "decorated": (JSONish(), ('{"k": 1, "j": 2}', '{"j":2,"k":1}'), ("[1]", "[2]")),
    "utils": (JSONText(), ('{"k": 1}', '{"k":1}'), ('"a"', '"b"')),
    "domain": (JSON_DOMAIN, ('{"k": 1}', '{"k":1}'), ("1", "2")),
    "variant": (sa.Text().with_variant(postgresql.JSON(), "postgresql"), ("[ ]", "[]"), ("1", "2")),
    "array": (sa.ARRAY(JSONish()), ("ARRAY['[1, 2]'::json]", "ARRAY['[1,2]'::json]"),
              ("ARRAY['1'::json]", "ARRAY['2'::json]")),
    "domains": (sa.ARRAY(JSON_DOMAIN), ("ARRAY['{}'::json_domain]", "ARRAY['{ }'::json_domain]"),
                ("ARRAY['{}'::json_domain]", "'{}'")),
    "xml": (Named("XML"), ("'<a/>'", "'<a/>'"), ("'<a/>'", "'<b/>'")),
    "point": (Named("POINT"), ("'(1,2)'", "'(1,2)'"), ("'(1,2)'", "'(2,1)'")),
    "box": (Named("BOX"), ("'(1,1),(0,0)'", "'(1,1),(0,0)'"), ("'(1,1),(0,0)'", "'(2,2),(1,1)'")),
    "jsonpath": (postgresql.JSONPATH(), ("'$.a'", "'$.\"a\"'"), ("'$.a'", "'$.b'")),
}  # fmt: skip


def _literal(value: str) -> str:
    """Plain JSON text becomes a quoted literal; SQL expressions stay as they are."""
    return value if value.startswith(("ARRAY", "'")) else "'" + value + "'"


def test_types_without_equality_compare_on_postgresql_however_they_are_reached(pg_url):
    """PostgreSQL looks `=` up on the stored type: json (and the few other types without a
    true equality: xml, jsonpath, geometric types, whose box `=` compares areas) reached
    through a TypeDecorator, a variant, a domain or an array must still be cast, or the
    first import of such a model fails ("operator does not exist: json = json")."""
    from cachework.importers.versions import comparable

    columns = []
    for name, (type_, _same, _other) in NO_EQUALITY.items():
        columns += [sa.Column(f"{name}_a", type_), sa.Column(f"{name}_b", type_)]
    table = sa.Table("no_equality_types", sa.MetaData(), sa.Column("id", sa.Integer), *columns)
    engine = sa.create_engine(pg_url, poolclass=sa.pool.NullPool)
    dialect = engine.dialect
    try:
        with engine.begin() as conn:
            table.metadata.create_all(conn)
            for ident, pick in ((1, 1), (2, 2)):  # row 1: equal pairs; row 2: different
                values = [_literal(v) for item in NO_EQUALITY.values() for v in item[pick]]
                conn.exec_driver_sql(
                    f"INSERT INTO no_equality_types VALUES ({ident}, {', '.join(values)})"
                )
            for name in NO_EQUALITY:
                a, b = table.c[f"{name}_a"], table.c[f"{name}_b"]
                differs = comparable(a, a.type, dialect).is_distinct_from(
                    comparable(b, b.type, dialect)
                )
                found = conn.execute(sa.select(differs).order_by(table.c.id)).scalars().all()
                assert found == [False, True], name
    finally:
        engine.dispose()
