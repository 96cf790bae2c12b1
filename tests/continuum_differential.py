"""The differential test against SQLAlchemy-Continuum itself, run in a process of its own
per app (Continuum's set-up is global to a process):

    python -m tests.continuum_differential APP_MODULE DATABASE_URL [EXAMPLES]

Hypothesis draws sequences of steps (inserts, updates, deletes, re-inserts, class changes
through re-insertion, association links added and removed, a value written by plain SQL
into a column only a single-table subclass maps, on a base-class row) over every model of
the app (`tests/continuum_apps/shapes.py`); the fixed cases of `CASES` run first (side by
side, as one sequence): random sequences reach those paths only now and then. Each
sequence runs twice: (a) through the ORM with Continuum on, one commit per step, into one
database; (b) as plain SQL on the live tables, each step followed by a version import,
into another. A step's user, remote address and comment go on the transaction
(Continuum's way, or the import's arguments). After every step a second import must write
nothing; at the end every version table, `transaction`, `transaction_changes` and
`transaction_meta` must be equal row by row (transaction ids mapped to the step that made
them), and Continuum's API (`obj.versions`, `changeset`, `previous`/`next`, `tags` on
article versions, `revert()`) must read the same in both.

DATABASE_URL is a SQLite folder (`sqlite:///DIR`) or a PostgreSQL database, where this
process works in two schemas of its own and drops them at the end.
"""

from __future__ import annotations

import itertools
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from sqlalchemy.orm import Session
from sqlalchemy_continuum import versioning_manager

from cachework.importers.versions import import_versions
from tests.continuum_app import (
    COMMENTS,
    FAMILIES,
    POOLS,
    REMOTE,
    VALUES,
    App,
)
from tests.continuum_views import api_view, revert_view, tables_view, transaction_ids

# --- drawing steps ---------------------------------------------------------------------------


@st.composite
def sequences(draw: Any, max_steps: int = 4) -> list[dict]:
    """Steps; each touches a key at most once through the ORM (one commit's net change is
    its only change); plain SQL ("raw") goes first and Continuum does not see it."""
    live: dict[tuple[str, Any], str] = {}  # (family, key) -> class name
    links: set[tuple[int, int]] = set()
    steps = []
    for _ in range(draw(st.integers(1, max_steps))):
        ops: list[tuple] = []
        start = set(live)
        for key in POOLS["Widget"]:  # a value in Gadget's column on a Widget row
            if live.get(("Widget", key)) == "Widget" and draw(st.booleans()):
                ops.append(("raw", "Widget", key, {"gizmo": draw(st.sampled_from(["r", None]))}))
        deleted: set[tuple[str, Any]] = set()
        for fam, keys in POOLS.items():
            for key in keys:
                if not draw(st.booleans()):
                    continue
                current = live.get((fam, key))
                if current is None:
                    name = draw(st.sampled_from(FAMILIES.get(fam, [fam])))
                    values = {a: draw(st.sampled_from(v)) for a, v in VALUES[name].items()}
                    ops.append(("insert", name, key, values))
                    live[(fam, key)] = name
                elif draw(st.booleans()) and not (
                    fam == "Tag" and any(t == key for _a, t in links)
                ):
                    ops.append(("delete", current, key))
                    deleted.add((fam, key))
                    del live[(fam, key)]
                    if fam == "Article":
                        links = {(a, t) for a, t in links if a != key}
                else:
                    attrs = VALUES[current]
                    chosen = draw(st.lists(st.sampled_from(sorted(attrs)), unique=True))
                    values = {a: draw(st.sampled_from(attrs[a])) for a in chosen}
                    ops.append(("update", current, key, values))
        before = start - deleted
        for a in POOLS["Article"]:
            for t in POOLS["Tag"]:
                if ("Article", a) in before and ("Tag", t) in before and draw(st.booleans()):
                    if (a, t) in links:
                        ops.append(("unlink", a, t))
                        links.discard((a, t))
                    else:
                        ops.append(("link", a, t))
                        links.add((a, t))
        user = draw(st.sampled_from([None, 0, 1]))
        remote, comment = draw(st.sampled_from(REMOTE)), draw(st.sampled_from(COMMENTS))
        steps.append({"ops": ops, "user": user, "remote": remote, "comment": comment})
    return steps


def _step(*ops: tuple, user: int | None = None, comment: str | None = None) -> dict:
    return {"ops": list(ops), "user": user, "remote": None, "comment": comment}


def _car(key: int, wheels: int | None, spec: Any, doors: int | None) -> tuple:
    return ("insert", "Car", key, {"wheels": wheels, "spec": spec, "doors": doors})


def _vehicle(key: int, wheels: int | None, spec: Any) -> tuple:
    return ("insert", "Vehicle", key, {"wheels": wheels, "spec": spec})


def _widget(name: str, key: int, label: str | None, size: int | None, **gizmo: Any) -> tuple:
    return ("insert", name, key, {"label": label, "size": size, **gizmo})


def _tag(key: int) -> tuple:
    return ("insert", "Tag", key, {"name": "red"})


def _article(key: int, title: str | None) -> tuple:
    return ("insert", "Article", key, {"title": title, "data": {"k": key}})


# Paths random sequences reach only now and then: at the test's budget they missed a no-op
# `_close_joined` and a no-op single-table CASE in `_live_values`, which these catch. They
# touch different tables, so they run side by side as one sequence (`FIXED`).
CASES: dict[str, list[dict]] = {
    # Joined inheritance: a key deleted and re-inserted as the other class (the version it
    # supersedes is closed in every table of *its* class), changes in one table only.
    "joined": [
        _step(_car(1, 4, {"k": 1}, 3), _vehicle(2, 2, None), _car(3, 4, [1, "two"], 5),
              comment="first"),
        _step(("update", "Car", 1, {"doors": 5}), ("update", "Vehicle", 2, {"spec": 3}),
              ("update", "Car", 3, {"wheels": 2}), user=0),
        _step(("delete", "Car", 1), ("delete", "Vehicle", 2)),
        _step(_vehicle(1, 2, "text"), _car(2, 4, 3, 3), ("update", "Car", 3, {"doors": None}),
              comment="second"),
        _step(("update", "Vehicle", 1, {"wheels": 4}), ("update", "Car", 2, {"doors": 5}),
              ("delete", "Car", 3)),
        _step(("delete", "Vehicle", 1), ("delete", "Car", 2), _vehicle(3, 4, None)),
    ],
    # Single-table inheritance: Gadget's column holds a value (written by plain SQL) on a
    # Widget row, which a Widget's version leaves empty; classes change by re-insertion.
    "single": [
        _step(_widget("Widget", 1, "l1", 1), _widget("Gadget", 2, "l2", 2, gizmo="g"),
              _widget("Widget", 3, None, None)),
        _step(("raw", "Widget", 1, {"gizmo": "r"}), ("raw", "Widget", 3, {"gizmo": "r"}),
              ("update", "Gadget", 2, {"gizmo": None}), comment="first"),
        _step(("update", "Widget", 1, {"label": "l2"}), ("delete", "Gadget", 2)),
        _step(("delete", "Widget", 1), _widget("Widget", 2, "l1", 2),
              ("update", "Widget", 3, {"size": 1})),
        _step(("raw", "Widget", 2, {"gizmo": "r"}), _widget("Gadget", 1, "l1", 1, gizmo="g"),
              ("update", "Widget", 2, {"size": 1}), ("delete", "Widget", 3)),
        _step(("update", "Gadget", 1, {"gizmo": None, "label": "l2"}), ("delete", "Widget", 2),
              _widget("Gadget", 3, "l2", None, gizmo="g")),
    ],
    # The association table changed at several steps: links added, removed, re-added, and
    # removed with their article.
    "tags": [
        _step(_tag(1), _tag(2), _tag(3), _article(1, "A"), _article(2, "B")),
        _step(("link", 1, 1), ("link", 1, 2), ("link", 2, 1),
              ("update", "Article", 2, {"title": "A"}), comment="second"),
        _step(("unlink", 1, 1), ("link", 1, 3), ("link", 2, 2), user=1),
        _step(("unlink", 1, 2), ("link", 1, 1), ("delete", "Article", 2)),
        _step(_article(2, None), ("unlink", 1, 3), comment="first"),
        _step(("delete", "Tag", 3), ("link", 2, 1), ("link", 1, 2),
              ("update", "Article", 1, {"data": [1, "two"]})),
    ],
}  # fmt: skip


def side_by_side(cases: list[list[dict]]) -> list[dict]:
    """One sequence whose step n does step n of every case (plain SQL first); the user and
    comment of the first case that has one."""
    steps = []
    for parts in itertools.zip_longest(*cases):
        ops = [op for p in parts if p is not None for op in p["ops"]]
        given = [p for p in parts if p is not None]
        user = next((p["user"] for p in given if p["user"] is not None), None)
        comment = next((p["comment"] for p in given if p["comment"] is not None), None)
        raw_first = sorted(ops, key=lambda op: op[0] != "raw")
        steps.append(_step(*raw_first, user=user, comment=comment))
    return steps


FIXED = side_by_side(list(CASES.values()))


# --- applying a step, both ways ------------------------------------------------------------


def _key_attrs(cls: type, key: Any) -> dict[str, Any]:
    props = [sa.inspect(cls).get_property_by_column(c) for c in sa.inspect(cls).primary_key]
    values = key if isinstance(key, tuple) else (key,)
    return {p.key: v for p, v in zip(props, values, strict=True)}


def apply_orm(app: App, session: Session, step: dict) -> None:
    """The step through the ORM: Continuum's own flush writes the versions. Everything
    the step touches is loaded first, so the commit's flush is the step's only flush (an
    autoflush half-way would be a second flush in the transaction)."""
    article, tag = app.cls("Article"), app.cls("Tag")
    with continuum_off():  # before anything is loaded: no flush sees it
        for op in step["ops"]:
            if op[0] == "raw":
                _apply_raw(app, session, op)
    loaded = {}
    for op in step["ops"]:
        if op[0] in ("update", "delete"):
            loaded[(op[1], op[2])] = obj = session.get(app.cls(op[1]), op[2])
            if op[1] == "Article":
                obj.tags  # noqa: B018 - loaded now, not by an autoflushing lazy load
        elif op[0] in ("link", "unlink"):
            loaded[("Article", op[1])] = obj = session.get(article, op[1])
            obj.tags  # noqa: B018
            loaded[("Tag", op[2])] = session.get(tag, op[2])
    session.info["step"] = step
    for op in step["ops"]:
        kind = op[0]
        if kind == "insert":
            _k, name, key, values = op
            session.add(app.cls(name)(**_key_attrs(app.cls(name), key), **values))
        elif kind == "update":
            obj = loaded[(op[1], op[2])]
            for attr, value in op[3].items():
                # Only net changes: Continuum also versions an object whose attribute was
                # set to its own value when another change (a tag) makes it dirty.
                if getattr(obj, attr) != value:
                    setattr(obj, attr, value)
        elif kind == "delete":
            session.delete(loaded[(op[1], op[2])])
        elif kind == "link":
            loaded[("Article", op[1])].tags.append(loaded[("Tag", op[2])])
        elif kind == "unlink":
            loaded[("Article", op[1])].tags.remove(loaded[("Tag", op[2])])


def _apply_raw(app: App, session: Session, op: tuple) -> None:
    """Plain SQL on the class's own table, as another program would write it."""
    _k, name, key, values = op
    table = app.cls(name).__table__
    session.execute(sa.update(table).where(_where(app.cls(name), table, key)).values(values))


def _user_and_address(app: App) -> None:
    """Put the step's user, remote address and comment on the transaction Continuum's
    flush made (a listener after Continuum's own `before_flush`); the comment goes in
    TransactionMeta's `meta`, as its documentation shows."""

    @sa.event.listens_for(Session, "before_flush")
    def record(session: Session, _context: Any, _instances: Any) -> None:
        step = session.info.get("step")
        if step is None:
            return
        txn = versioning_manager.unit_of_work(session).current_transaction
        if txn is not None:
            if step["user"] is not None:
                txn.user_id = app.users[step["user"]]
            txn.remote_addr = step["remote"]
            if app.has_meta and step.get("comment") is not None:
                txn.meta = {"comment": step["comment"]}


def _rows(cls: type, key: Any, values: dict[str, Any], insert: bool) -> list[tuple]:
    """(table, column values) per table of the class, base table first."""
    mapper = sa.inspect(cls)
    attrs = {**_key_attrs(cls, key), **values}
    out = []
    for table in mapper.tables:
        row = {}
        for column in table.c:
            try:
                prop = mapper.get_property_by_column(column)
            except sa.orm.exc.UnmappedColumnError:
                continue  # a column only a sibling class maps
            if prop.key in attrs:
                row[column.key] = attrs[prop.key]
            elif insert and column is mapper.base_mapper.polymorphic_on:
                row[column.key] = mapper.polymorphic_identity
        out.append((table, row))
    return out


def _where(cls: type, table: sa.Table, key: Any) -> Any:
    values = key if isinstance(key, tuple) else (key,)
    return sa.and_(*(c == v for c, v in zip(table.primary_key.columns, values, strict=True)))


@contextmanager
def continuum_off() -> Iterator[None]:
    """Plain SQL: no association tracking by Continuum's engine-wide hook either."""
    versioning_manager.options["versioning"] = False
    try:
        yield
    finally:
        versioning_manager.options["versioning"] = True


def apply_sql(app: App, session: Session, step: dict) -> None:
    """The step as plain SQL on the live tables (Continuum records nothing)."""
    links = app.link_table
    with continuum_off():
        for op in step["ops"]:
            kind = op[0]
            cls = app.cls(op[1]) if kind in ("insert", "update", "delete") else None
            if kind == "insert":
                for table, row in _rows(cls, op[2], op[3], insert=True):
                    session.execute(sa.insert(table).values(row))
            elif kind == "update":
                for table, row in _rows(cls, op[2], op[3], insert=False):
                    row = {k: v for k, v in row.items() if not table.c[k].primary_key}
                    if row:
                        session.execute(
                            sa.update(table).where(_where(cls, table, op[2])).values(row)
                        )
            elif kind == "delete":
                if op[1] == "Article":
                    session.execute(sa.delete(links).where(links.c.article_id == op[2]))
                for table in reversed(sa.inspect(cls).tables):
                    session.execute(sa.delete(table).where(_where(cls, table, op[2])))
            elif kind == "raw":
                _apply_raw(app, session, op)
            elif kind == "link":
                session.execute(sa.insert(links).values(article_id=op[1], tag_id=op[2]))
            else:
                session.execute(
                    sa.delete(links).where(links.c.article_id == op[1], links.c.tag_id == op[2])
                )


# --- the databases ---------------------------------------------------------------------------


class Pair:
    """The ORM database and the import database for one example."""

    def __init__(self, app: App, url: str) -> None:
        self.app = app
        self.url = url
        self.postgres = url.startswith("postgresql")
        self.tag = f"{os.getpid()}"
        self.engines: dict[str, sa.Engine] = {}
        for side in ("orm", "imp"):
            if self.postgres:
                schema = f"diff_{self.tag}_{side}"
                admin = sa.create_engine(url, poolclass=sa.pool.NullPool)
                with admin.begin() as conn:
                    conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
                    conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
                admin.dispose()
                engine = sa.create_engine(url, connect_args={"options": f"-csearch_path={schema}"})
            else:
                folder = Path(sa.engine.make_url(url).database)
                folder.mkdir(parents=True, exist_ok=True)
                engine = sa.create_engine(f"sqlite:///{folder / f'{side}.db'}")
            app.metadata.create_all(engine)
            self.engines[side] = engine

    def reset(self) -> None:
        """Empty every table (DELETE: on a few rows, far quicker than TRUNCATE's new files)."""
        tables = [t for t in self.app.metadata.sorted_tables]
        for engine in self.engines.values():
            with continuum_off(), engine.begin() as conn:
                for table in reversed(tables):
                    conn.execute(sa.delete(table))
            with Session(engine) as session:
                user = self.app.cls("User")
                session.add_all([user(id=u, name=f"user {u}") for u in self.app.users])
                session.commit()

    def close(self) -> None:
        for side, engine in self.engines.items():
            engine.dispose()
            if self.postgres:
                admin = sa.create_engine(self.url, poolclass=sa.pool.NullPool)
                with admin.begin() as conn:
                    conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "diff_{self.tag}_{side}" CASCADE'))
                admin.dispose()

    @contextmanager
    def session(self, side: str) -> Iterator[Session]:
        with Session(self.engines[side]) as session:
            yield session


def run_sequence(pair: Pair, steps: list[dict]) -> None:
    app = pair.app
    pair.reset()
    orm_steps: dict[int, int] = {}
    imp_steps: dict[int, int] = {}
    versioned = app.models.versioned
    with pair.session("orm") as session:
        known = set(transaction_ids(session))
    for number, step in enumerate(steps, 1):
        with pair.session("orm") as session:
            apply_orm(app, session, step)
            session.commit()
        with pair.session("orm") as session:
            made = set(transaction_ids(session)) - known
        known |= made
        assert len(made) <= 1, made
        orm_steps.update({txid: number for txid in made})
        with pair.session("imp") as session:
            apply_sql(app, session, step)
            session.commit()
        user = None if step["user"] is None else str(app.users[step["user"]])
        comment = step.get("comment") if app.has_meta else None
        with pair.session("imp") as session:  # counts first: the writing path must agree
            counted = import_versions(session, versioned, dry_run=True)
        with pair.session("imp") as session:
            result = import_versions(
                session, versioned, user=user, remote_addr=step["remote"], comment=comment
            )
            session.commit()
        assert {n: c.as_dict() for n, c in result.models.items()} == {
            n: c.as_dict() for n, c in counted.models.items()
        }, (counted.as_dict(), result.as_dict())
        if result.transaction_id is not None:
            imp_steps[result.transaction_id] = number
        assert bool(made) == (result.transaction_id is not None), (
            f"step {number}: Continuum made {len(made)} transaction(s), the import "
            f"{result.transaction_id!r}: {result.as_dict()['models']}"
        )
        if result.transaction_id is None:
            continue  # a second import would see what this one saw
        with pair.session("imp") as session:
            again = import_versions(session, versioned)
            session.commit()
        assert again.transaction_id is None, (
            f"step {number}: a second import wrote: {again.as_dict()}"
        )
    with pair.session("orm") as orm, pair.session("imp") as imp:
        want, got = tables_view(app, orm, orm_steps), tables_view(app, imp, imp_steps)
        for name in want:
            assert got[name] == want[name], _explain(name, want[name], got[name])
        want_api, got_api = api_view(app, orm, orm_steps), api_view(app, imp, imp_steps)
        for key in sorted(set(want_api) | set(got_api)):
            assert got_api.get(key) == want_api.get(key), (key, want_api.get(key), got_api.get(key))
    with pair.session("orm") as orm, pair.session("imp") as imp:
        assert revert_view(app, imp) == revert_view(app, orm)


def _explain(name: str, want: list, got: list) -> str:
    missing = [r for r in want if r not in got]
    extra = [r for r in got if r not in want]
    return (
        f"{name} differs;\n  Continuum wrote, the import did not: {missing}\n"
        f"  the import wrote, Continuum did not: {extra}"
    )


def main(argv: list[str]) -> None:
    module, url = argv[0], argv[1]
    examples = int(argv[2]) if len(argv) > 2 else 10
    app = App(module)
    _user_and_address(app)
    pair = Pair(app, url)
    try:
        try:
            run_sequence(pair, FIXED)
        except Exception as exc:
            exc.add_note(f"in the fixed sequence (CASES, side by side): {FIXED}")
            raise

        @settings(
            max_examples=examples,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
            print_blob=True,
            phases=[Phase.explicit, Phase.generate]
            if os.environ.get("CACHEWORK_DIFF_NO_SHRINK")
            else list(Phase),
        )
        @given(sequences(int(os.environ.get("CACHEWORK_DIFF_STEPS", "4"))))
        def differential(steps: list[dict]) -> None:
            run_sequence(pair, steps)

        differential()
    finally:
        pair.close()
    print(f"ok: {module} on {url.split(':')[0]}, {examples} examples")


if __name__ == "__main__":
    main(sys.argv[1:])
