"""Random writes across projects against a reference model of which items must be rebuilt
(issue 23's hypothesis test).

Why: tests/test_data_driven.py checks one write of each kind. Here hypothesis draws
sequences of transactions, each of several writes of every kind (ORM flushes and ORM bulk
statements; products updated, moved, inserted and deleted; category codes renamed;
project titles changed; writes that change nothing), committed or rolled back. A reference
model keeps the committed rows and, from the demo plugin's declarations alone
(`InventoryPlugin.depends_on`), says which (project, "inventory", item) scopes the
committed writes touched. After every transaction the follower reads the log, and the
pending scopes in `cache_changes` must be exactly the model's: a missed scope is an item
left stale, an extra one a rebuild for nothing; a rolled-back transaction adds nothing.

What must be rebuilt (`World.must`):
- a write of rows of a table an item reads with `project=<column>` touches that item of
  the projects the written rows belonged to before and after the write (a row a bulk
  UPDATE matches counts as written, even when set to its own value: the database
  updated it);
- a write of a table an item reads whole (`reads(table)`) touches it in every project;
- a write to a table no item reads, or one that changes no row, touches nothing.

What the implementation marks besides (`World.extra`, each rule named where it is applied):
- FALLBACK: an ORM bulk UPDATE that sets the project column cannot tell the rows' old
  projects (RETURNING gives the new ones), so the tracking takes the whole table
  (cache/invalidation/statement_keys.py, documented): every project;

This model found two more, since fixed in the core and asserted by `test_*_marks_nothing`
below: a bulk UPDATE or DELETE that matched no row was taken as the whole table (an empty
RETURNING read as "cannot tell"), and an attribute set to the value it had as a write.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from decimal import Decimal
from pathlib import Path

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from sqlalchemy.orm import Session, sessionmaker

from cachework.cache.items.reads import Reads
from cachework.database import Database
from cachework.schema import cache_changes
from cachework.worker.change_follower import ChangeFollower
from cachework.worker.runtime import Runtime
from demo.models import Category, Product, Project
from demo.plugin import InventoryPlugin
from tests.data_driven_helpers import follow as follow_all
from tests.data_driven_helpers import followed_app

APP = InventoryPlugin.app_name
MISSING = 999_999  # a product id no row has: a bulk statement that matches nothing there
Scope = tuple[str, str, str]
EVERY = None  # a write's projects: every project (the whole table)


# --- the app under test (tests/data_driven_helpers.py) ----------------------------------------


@dataclass
class App:
    runtime: Runtime
    Session: sessionmaker
    follower: ChangeFollower
    baseline: World


@pytest.fixture
def app(database: Database, tmp_path: Path) -> Iterator[App]:
    with followed_app(database, tmp_path) as followed:
        with followed.Session() as session:
            baseline = World.read(session)
        yield App(followed.runtime, followed.Session, followed.follower, baseline)


def follow(app: App) -> set[Scope]:
    return follow_all(app.runtime, app.follower)


def reset(app: App) -> None:
    """Back to the seeded rows with nothing pending, for the next hypothesis example. The
    rows are restored on an untracked connection: the reset marks nothing."""
    follow(app)  # whatever the last example left is read first
    base = app.baseline
    with app.runtime.database.engine.begin() as conn:
        conn.execute(sa.delete(Product.__table__))
        conn.execute(sa.insert(Product.__table__), [row.values(i) for i, row in base.rows()])
        for category_id, code in base.codes.items():
            table = Category.__table__
            conn.execute(sa.update(table).where(table.c.id == category_id).values(code=code))
        for project, title in base.titles.items():
            table = Project.__table__
            conn.execute(sa.update(table).where(table.c.uuid == project).values(title=title))
    clear_pending(app)


def clear_pending(app: App) -> None:
    """Forget the marked scopes (the follower's cursor stays where it is)."""
    with app.runtime.database.engine.begin() as conn:
        conn.execute(sa.delete(cache_changes))
    assert follow(app) == set()


# --- the reference model --------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """A product as the model knows it."""

    project: str
    price: Decimal
    active: bool
    category: int | None

    def values(self, product_id: int) -> dict:
        return {
            "id": product_id,
            "sku": f"SKU-{product_id:07d}",
            "name": f"Product {product_id}",
            "price": self.price,
            "category_id": self.category,
            "project_uuid": self.project,
            "active": self.active,
        }


@dataclass
class World:
    """The committed rows the items read (and the project titles, which none reads)."""

    projects: list[str]
    products: dict[int, Row]
    codes: dict[int, str]
    titles: dict[str, str]
    next_id: int = 1_000
    must: set[Scope] = field(default_factory=set)  # the rebuilds the writes need
    extra: set[Scope] = field(default_factory=set)  # the implementation's known extras

    @classmethod
    def read(cls, session: Session) -> World:
        products = {
            p.id: Row(p.project_uuid, p.price, p.active, p.category_id)
            for p in session.scalars(sa.select(Product))
        }
        codes = {c.id: c.code for c in session.scalars(sa.select(Category))}
        titles = {p.uuid: p.title for p in session.scalars(sa.select(Project))}
        return cls(sorted(titles), products, codes, titles)

    def rows(self) -> list[tuple[int, Row]]:
        return sorted(self.products.items())

    def copy(self) -> World:
        return replace(
            self,
            products=dict(self.products),
            codes=dict(self.codes),
            titles=dict(self.titles),
            must=set(),
            extra=set(),
        )

    def product(self, pick: int) -> int | None:
        ids = sorted(self.products)
        return ids[pick % len(ids)] if ids else None

    def project(self, pick: int) -> str:
        return self.projects[pick % len(self.projects)]

    def new_id(self) -> int:
        self.next_id += 1
        return self.next_id

    def write(self, table: str, projects: set[str] | None) -> None:
        """Rows of `table` written: the projects they belonged to before and after
        (EVERY: a table read whole). The declarations say what that touches."""
        self.must |= self.touches(table, projects)

    def known_extra(self, rule: str, table: str, projects: set[str] | None) -> None:
        """What the implementation marks besides (module docstring: `rule`), as if rows of
        `table` in `projects` (EVERY: the whole table) had been written."""
        assert rule == "FALLBACK", rule
        self.extra |= self.touches(table, projects)

    def touches(self, table: str, projects: set[str] | None) -> set[Scope]:
        found: set[Scope] = set()
        for item, declared in InventoryPlugin.depends_on.items():
            for entry in declared:
                if entry.table != table:
                    continue
                keyed = _project_column(entry) is not None and projects is not EVERY
                found.update((p, APP, item) for p in (projects if keyed else self.projects))
        return found

    def same_rows(self, other: World) -> bool:
        return (self.products, self.codes, self.titles) == (
            other.products,
            other.codes,
            other.titles,
        )


def _project_column(entry: Reads) -> str | None:
    """The declared project column (the demo's paths are one column of the table)."""
    if entry.project is None:
        return None
    assert "." not in entry.project, f"the model follows no joins: {entry}"
    return entry.project


# --- the writes: each runs on the session and tells the model what it wrote --------------


@dataclass(frozen=True)
class SetFields:
    """ORM: set a product's price and/or active (None: left alone)."""

    pick: int
    price: Decimal | None
    active: bool | None

    def run(self, session: Session, world: World) -> None:
        product_id = world.product(self.pick)
        if product_id is None:
            return
        row, obj = world.products[product_id], session.get(Product, product_id)
        new = replace(
            row,
            price=row.price if self.price is None else self.price,
            active=row.active if self.active is None else self.active,
        )
        if self.price is not None:
            obj.price = self.price
        if self.active is not None:
            obj.active = self.active
        if new != row:
            world.products[product_id] = new
            world.write("products", {row.project})


@dataclass(frozen=True)
class Move:
    """ORM: move a product to another project (maybe its own: no change)."""

    pick: int
    to: int

    def run(self, session: Session, world: World) -> None:
        product_id = world.product(self.pick)
        if product_id is None:
            return
        row, target = world.products[product_id], world.project(self.to)
        session.get(Product, product_id).project_uuid = target
        if target != row.project:
            world.products[product_id] = replace(row, project=target)
            world.write("products", {row.project, target})


@dataclass(frozen=True)
class Insert:
    """ORM: a new product in a project."""

    to: int
    category: int | None

    def run(self, session: Session, world: World) -> None:
        product_id, row = world.new_id(), Row(world.project(self.to), Decimal("3.00"), True, None)
        if self.category is not None:
            row = replace(row, category=sorted(world.codes)[self.category % len(world.codes)])
        session.add(Product(**row.values(product_id)))
        world.products[product_id] = row
        world.write("products", {row.project})


@dataclass(frozen=True)
class Delete:
    """ORM: delete a product."""

    pick: int

    def run(self, session: Session, world: World) -> None:
        product_id = world.product(self.pick)
        if product_id is None:
            return
        session.delete(session.get(Product, product_id))
        world.write("products", {world.products.pop(product_id).project})


@dataclass(frozen=True)
class Recode:
    """ORM: change a category's code (`fresh` False: set it to what it is)."""

    pick: int
    fresh: bool

    def run(self, session: Session, world: World) -> None:
        category_id = sorted(world.codes)[self.pick % len(world.codes)]
        code = f"code-{world.new_id()}" if self.fresh else world.codes[category_id]
        session.get(Category, category_id).code = code
        if code != world.codes[category_id]:
            world.codes[category_id] = code
            world.write("categories", EVERY)


@dataclass(frozen=True)
class Retitle:
    """ORM: change a project's title (no item reads it)."""

    pick: int

    def run(self, session: Session, world: World) -> None:
        project = world.project(self.pick)
        title = f"Title {world.new_id()}"
        session.get(Project, project).title = title
        world.titles[project] = title
        world.write("projects", {project})


def _ids(world: World, picks: list[int], missing: bool) -> list[int]:
    found = {world.product(p) for p in picks} - {None}
    return sorted(found) + ([MISSING] if missing or not found else [])


@dataclass(frozen=True)
class BulkPrice:
    """ORM bulk UPDATE by criteria (keys from RETURNING): set the price of some products."""

    picks: list[int]
    missing: bool
    price: Decimal

    def run(self, session: Session, world: World) -> None:
        ids = _ids(world, self.picks, self.missing)
        session.execute(sa.update(Product).where(Product.id.in_(ids)).values(price=self.price))
        matched = [i for i in ids if i in world.products]
        for i in matched:  # the database updates a matched row even to its own value
            world.products[i] = replace(world.products[i], price=self.price)
        if matched:
            world.write("products", {world.products[i].project for i in matched})


@dataclass(frozen=True)
class BulkMove:
    """ORM bulk UPDATE that sets the project column: the whole table (module docstring)."""

    picks: list[int]
    missing: bool
    to: int

    def run(self, session: Session, world: World) -> None:
        ids, target = _ids(world, self.picks, self.missing), world.project(self.to)
        statement = sa.update(Product).where(Product.id.in_(ids)).values(project_uuid=target)
        session.execute(statement)
        matched = [i for i in ids if i in world.products]
        old = {world.products[i].project for i in matched}
        for i in matched:
            world.products[i] = replace(world.products[i], project=target)
        if matched:
            world.write("products", old | {target})
        world.known_extra("FALLBACK", "products", EVERY)


@dataclass(frozen=True)
class BulkDelete:
    """ORM bulk DELETE by criteria (keys from RETURNING)."""

    picks: list[int]
    missing: bool

    def run(self, session: Session, world: World) -> None:
        ids = _ids(world, self.picks, self.missing)
        session.execute(sa.delete(Product).where(Product.id.in_(ids)))
        gone = {world.products.pop(i).project for i in ids if i in world.products}
        if gone:
            world.write("products", gone)


@dataclass(frozen=True)
class BulkInsert:
    """ORM bulk INSERT of parameter rows (keys from the rows)."""

    to: list[int]

    def run(self, session: Session, world: World) -> None:
        rows = {world.new_id(): Row(world.project(t), Decimal("4.00"), False, 1) for t in self.to}
        session.execute(sa.insert(Product), [row.values(i) for i, row in rows.items()])
        world.products.update(rows)
        world.write("products", {row.project for row in rows.values()})


picks = st.integers(0, 40)
prices = st.sampled_from([Decimal("1.00"), Decimal("9.99")])
WRITES = st.one_of(  # hypothesis tries the first ones most: the subtler ones go first
    st.builds(Move, picks, st.integers(0, 2)),
    st.builds(BulkDelete, st.lists(picks, max_size=3), st.booleans()),
    st.builds(Recode, st.integers(0, 7), st.booleans()),
    st.builds(BulkPrice, st.lists(picks, max_size=3), st.booleans(), prices),
    st.builds(SetFields, picks, st.none() | prices, st.none() | st.booleans()),
    st.builds(Delete, picks),
    st.builds(BulkInsert, st.lists(st.integers(0, 2), min_size=1, max_size=3)),
    st.builds(Insert, st.integers(0, 2), st.none() | st.integers(0, 7)),
    st.builds(BulkMove, st.lists(picks, max_size=3), st.booleans(), st.integers(0, 2)),
    st.builds(Retitle, st.integers(0, 2)),
)
# A step: one transaction of writes (none: an empty commit), committed (True) or not.
STEPS = st.lists(st.tuples(st.lists(WRITES, max_size=4), st.booleans()), min_size=1, max_size=6)


def run_step(app: App, world: World, writes: list, commit: bool) -> World:
    """One transaction: every write flushed on its own, then a commit or a rollback. The
    world after it (what it must rebuild, the known extras), or `world` if rolled back."""
    after = world.copy()
    with app.Session() as session:
        for write in writes:
            event(type(write).__name__)
            write.run(session, after)
            session.flush()
        if not commit:
            session.rollback()
            return world
        session.commit()
    return after


# --- the tests ------------------------------------------------------------------------------


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(steps=STEPS)
def test_random_writes_mark_exactly_the_items_the_model_says(app: App, steps: list) -> None:
    """After each transaction the pending scopes are exactly what it touched (they are
    cleared between transactions, so a whole-table write does not hide the next one's
    scopes): never fewer than the model's `must`, nothing beyond it but the known extras;
    a rolled-back transaction marks nothing; and the model's rows are the database's."""
    reset(app)
    world = app.baseline.copy()
    for writes, commit in steps:
        world = run_step(app, world, writes, commit)
        must, extra = (world.must, world.extra) if commit else (set(), set())
        event(f"extras beyond must: {bool(extra - must)}")
        pending = follow(app)
        assert must <= pending, ("missed", writes, commit, must - pending)
        assert pending == must | extra, ("extra", writes, commit, pending - must - extra)
        clear_pending(app)
    with app.Session() as session:
        assert World.read(session).same_rows(world)


def test_an_empty_commit_marks_nothing(app: App) -> None:
    reset(app)
    with app.Session.begin() as session:
        session.scalars(sa.select(Product)).all()  # reads, writes nothing
    with app.Session.begin():
        pass
    assert follow(app) == set()


def test_a_write_to_a_table_no_item_reads_marks_nothing(app: App) -> None:
    reset(app)
    with app.Session.begin() as session:
        session.get(Project, app.baseline.projects[0]).title = "Renamed"
    assert follow(app) == set()


@pytest.mark.parametrize("kind", ["update", "delete"])
def test_a_bulk_statement_that_matches_no_row_marks_nothing(app: App, kind: str) -> None:
    reset(app)
    where = Product.id == MISSING
    statement = sa.update(Product).where(where).values(price=1)
    with app.Session.begin() as session:
        result = session.execute(statement if kind == "update" else sa.delete(Product).where(where))
        assert result.rowcount == 0
    assert follow(app) == set()


@pytest.mark.parametrize("column", ["price", "active", "project_uuid"])
def test_setting_a_column_to_its_own_value_marks_nothing(app: App, column: str) -> None:
    """The ORM issues no UPDATE for an attribute set to the value it has: no row changed,
    so no item of its project needs a rebuild."""
    reset(app)
    with app.Session.begin() as session:
        product = session.get(Product, 1)
        setattr(product, column, getattr(product, column))
    assert follow(app) == set()


def test_the_model_derives_its_touches_from_the_declarations(app: App) -> None:
    """A guard on the model itself: a write to products touches both items of its project,
    one to categories `by_category` everywhere, one to projects nothing."""
    world = app.baseline.copy()
    first = world.projects[0]
    for table, projects in (("products", {first}), ("categories", EVERY), ("projects", {first})):
        world.write(table, projects)
    by_category = {(p, APP, "by_category") for p in world.projects}
    assert world.must == {(first, APP, "summary")} | by_category and world.extra == set()
    assert len(world.projects) == 3
