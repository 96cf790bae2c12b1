"""Checks of the app-owned Continuum set-up, each in a process of its own (Continuum's
set-up is global to a process):

    python -m tests.continuum_checks CHECK SQLITE_FILE

Every check prints "ok CHECK" at the end; any failure is an exception (exit code 1).
"""

from __future__ import annotations

import sys
import uuid

import sqlalchemy as sa
from sqlalchemy.orm import Session
from sqlalchemy_continuum import versioning_manager
from sqlalchemy_continuum.plugins import (
    NullDeletePlugin,
    PropertyModTrackerPlugin,
    TransactionChangesPlugin,
    TransactionMetaPlugin,
)

from cachework.errors import NotFoundError, ValidationError
from cachework.importers.bootstrap import bootstrap
from cachework.importers.versions import UnsupportedVersioning, import_versions


def _raises(error: type[Exception], text: str, fn, *args, **kwargs) -> None:
    try:
        fn(*args, **kwargs)
    except error as exc:
        assert text in str(exc), f"{text!r} not in {exc}"
        return
    raise AssertionError(f"no {error.__name__} ({text})")


def _engine(url: str, metadata: sa.MetaData, tables: list[str] | None = None) -> sa.Engine:
    engine = sa.create_engine(url)
    chosen = None if tables is None else [metadata.tables[t] for t in tables]
    metadata.create_all(engine, tables=chosen)
    return engine


def _import(engine: sa.Engine, models, **kwargs):
    with Session(engine) as session:
        result = import_versions(session, models.versioned, **kwargs)
        session.commit()
    return result


def _transactions(engine: sa.Engine) -> list:
    with engine.connect() as conn:
        return conn.execute(sa.text('SELECT * FROM "transaction" ORDER BY id')).all()


def check_defaults(url: str) -> None:
    """No make_versioned in the app: cachework's defaults (no user class, meta plugin)."""
    bootstrap(("demo.models",))
    assert versioning_manager.user_cls is None
    assert [type(p) for p in versioning_manager.plugins] == [TransactionMetaPlugin]


def check_full(url: str) -> None:
    """The app's own make_versioned (integer user key, three plugins) is used as it is."""
    models = bootstrap(("tests.continuum_apps.full",))
    assert versioning_manager.user_cls == "User"
    assert [type(p) for p in versioning_manager.plugins] == [
        TransactionMetaPlugin,
        TransactionChangesPlugin,
        PropertyModTrackerPlugin,
    ]
    by_name = models.by_name()
    engine = _engine(url, models.metadatas[0])
    with Session(engine) as session:
        session.add(by_name["User"](id=7, name="seven"))
        session.commit()
    with engine.begin() as conn:
        conn.execute(sa.insert(by_name["Tag"].__table__).values(id=1, name="t"))
    _raises(ValidationError, "user='abc' is not a valid int", _import, engine, models, user="abc")
    _raises(NotFoundError, "user='8': no User with that key", _import, engine, models, user="8")
    assert _transactions(engine) == []
    result = _import(engine, models, user="7", comment="first", remote_addr="10.1.1.1")
    assert result.models["Tag"].created == 1
    ((txid, remote, user_id, _issued),) = _transactions(engine)
    assert (remote, user_id) == ("10.1.1.1", 7) and isinstance(user_id, int)
    with engine.connect() as conn:
        meta = dict(conn.execute(sa.text("SELECT key, value FROM transaction_meta")).all())
        changes = conn.execute(sa.text("SELECT * FROM transaction_changes")).all()
    assert meta == {"comment": "first"}  # the user is on user_id, not in the meta
    assert changes == [(txid, "Tag")]
    assert _import(engine, models).transaction_id is None


def check_uuid_user(url: str) -> None:
    """A UUID user key goes into user_id as a UUID; with no TransactionMeta plugin a
    comment is refused before anything is written."""
    models = bootstrap(("tests.continuum_apps.subquery",))
    assert versioning_manager.options["strategy"] == "subquery"
    assert [type(p) for p in versioning_manager.plugins] == [
        TransactionChangesPlugin,
        PropertyModTrackerPlugin,
        NullDeletePlugin,
    ]
    by_name = models.by_name()
    engine = _engine(url, models.metadatas[0])
    someone = uuid.UUID(int=42)
    with Session(engine) as session:
        session.add(by_name["User"](id=someone, name="u"))
        session.commit()
    with engine.begin() as conn:
        conn.execute(sa.insert(by_name["Tag"].__table__).values(id=1, name="t"))
    _raises(ValidationError, "TransactionMetaPlugin", _import, engine, models, comment="c")
    _raises(ValidationError, "is not a valid UUID", _import, engine, models, user="42")
    result = _import(engine, models, user=str(someone))
    assert result.transaction_id is not None
    with Session(engine) as session:
        txn = session.get(versioning_manager.transaction_cls, result.transaction_id)
        assert txn.user_id == someone and isinstance(txn.user_id, uuid.UUID)


def check_native(url: str) -> None:
    """Native versioning on one model: refused by name; the others import by name."""
    models = bootstrap(("tests.continuum_apps.native",))
    metadata = models.metadatas[0]
    engine = _engine(url, metadata, ["plain", "plain_version", "transaction", "transaction_meta"])
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO plain (id, name) VALUES (1, 'p')"))
    _raises(
        UnsupportedVersioning,
        "Triggered: native versioning",
        _import,
        engine,
        models,
    )
    _raises(UnsupportedVersioning, "other models can be imported by name: Plain", _import,
            engine, models)  # fmt: skip
    _raises(UnsupportedVersioning, "Triggered", _import, engine, models, names=["Triggered"])
    assert _transactions(engine) == []
    result = _import(engine, models, names=["Plain"])
    assert result.models["Plain"].created == 1 and list(result.models) == ["Plain"]


def check_third_party(url: str) -> None:
    """A third-party plugin that changes version objects is refused, naming it and every
    model; one that only supplies transaction arguments is fine."""
    models = bootstrap(("tests.continuum_apps.third_party",))
    engine = _engine(url, models.metadatas[0])
    _raises(
        UnsupportedVersioning,
        "Item: plugin StampPlugin (hooks after_create_version_object)",
        _import,
        engine,
        models,
    )
    versioning_manager.plugins = [p for p in versioning_manager.plugins
                                  if type(p).__name__ != "StampPlugin"]  # fmt: skip
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO items (id, name) VALUES (1, 'i')"))
    result = _import(engine, models)
    assert result.models["Item"].created == 1
    assert _transactions(engine)[0][1] == "192.0.2.9"  # the remaining plugin's remote_addr


def check_activity(url: str) -> None:
    """ActivityPlugin hooks into the flush: refused, naming the plugin and the models.
    make_versioned() installs it for every model, so naming one does not help, and the
    error says so; nothing is written."""
    models = bootstrap(("tests.continuum_apps.activity",))
    engine = _engine(url, models.metadatas[0])
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO items (id, name) VALUES (1, 'i')"))
        conn.execute(sa.text("INSERT INTO others (id, name) VALUES (1, 'o')"))
    feature = "Item, Other: plugin ActivityPlugin (hooks before_flush)"
    for names in (None, ["Item"], ["Other"]):
        _raises(UnsupportedVersioning, feature, _import, engine, models, names=names)
        _raises(UnsupportedVersioning, "no model can be imported, not by name either",
                _import, engine, models, names=names)  # fmt: skip
    assert _transactions(engine) == []
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM items_version")).scalar() == 0


def check_flask(url: str) -> None:
    """Continuum's FlaskPlugin (transaction arguments only): in a request, the import's
    transaction gets the request's user and address exactly as Continuum's own flush in
    the same request does (the oracle); outside one (a worker, the CLI), the run's."""
    import flask

    models = bootstrap(("tests.continuum_apps.flask_app",))
    from tests.continuum_apps.flask_app import Item, app

    engine = _engine(url, models.metadatas[0])
    with engine.begin() as conn:
        conn.execute(sa.text('INSERT INTO "user" (id) VALUES (3), (4)'))
        conn.execute(sa.text("INSERT INTO items (id, name) VALUES (1, 'written raw')"))
    request = {"environ_base": {"REMOTE_ADDR": "192.0.2.7"}}
    with app.test_request_context(**request):
        flask.g.user_id = 4
        with Session(engine) as session:  # Continuum's own unit of work
            session.add(Item(id=2, name="through the ORM"))
            session.commit()
    with app.test_request_context(**request):
        flask.g.user_id = 4
        result = _import(engine, models)
    assert (result.models["Item"].created, result.models["Item"].unchanged) == (1, 1)
    orm, imported = [(row.remote_addr, row.user_id) for row in _transactions(engine)]
    assert imported == orm == ("192.0.2.7", 4), (orm, imported)

    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE items SET name = 'changed' WHERE id = 1"))
    result = _import(engine, models, user="3", remote_addr="192.0.2.1")  # no request
    assert result.models["Item"].updated == 1
    last = _transactions(engine)[-1]
    assert (last.remote_addr, last.user_id) == ("192.0.2.1", 3)


def check_late(url: str) -> None:
    """make_versioned after a versioned class: the class is versioned all the same, with
    the app's set-up (its user class), and cachework made no call of its own."""
    models = bootstrap(("tests.continuum_apps.late",))
    assert versioning_manager.user_cls == "User" and list(versioning_manager.plugins) == []
    engine = _engine(url, models.metadatas[0])
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO users (id) VALUES (3)"))
        conn.execute(sa.text("INSERT INTO early (id, name) VALUES (1, 'e')"))
    result = _import(engine, models, user="3")
    assert result.models["Early"].created == 1
    assert _transactions(engine)[0][2] == 3


CHECKS = {name[6:]: fn for name, fn in globals().items() if name.startswith("check_")}


if __name__ == "__main__":
    name, path = sys.argv[1], sys.argv[2]
    CHECKS[name](f"sqlite:///{path}")
    print(f"ok {name}")
