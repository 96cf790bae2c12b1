"""Every model shape the version import handles, defined on an app's own declarative base.

`define(Base, ...)` maps, on the app's base:

- `User`: the user class of the app's Continuum transactions (integer or UUID key);
- `Article`: an attribute key that differs from its column name (`title` is
  `display_title`), a JSON column, and a many-to-many `tags` through the versioned
  association table `article_tag`;
- `Renamed`: every column named differently from its attribute, the key (`_id`) included;
- `Tag`: the other side of `tags`;
- `Token`: a UUID key, a binary and a float column, and JSON reached the ways PostgreSQL
  finds no `=` for unless the import looks through them: an app's TypeDecorator (`doc`),
  a TypeDecorator over a domain over json (`shaped`; plain JSON on SQLite) and an array of
  the TypeDecorator (`docs`, through a variant: plain JSON on SQLite);
- `Note`: a composite text key (`ns`, `name`);
- `Vehicle` / `Car`: joined-table inheritance (`cars` joins `vehicles`), with a JSON column
  in the parent table;
- `Widget` / `Gadget`: single-table inheritance, the subclass sorting before its base and
  mapping a column of the shared table the base class does not map;
- `Ledger`: the subquery strategy set on the model (the manager may use either).
"""

from __future__ import annotations

import json
import uuid

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import relationship


class JSONish(sa.types.TypeDecorator):
    """An app's own JSON type: `json` on PostgreSQL, reached through `impl`."""

    impl = sa.JSON
    cache_ok = True


# A domain over json, created by `_create_domain` (once per schema, before the tables).
JSON_DOMAIN = postgresql.DOMAIN("json_domain", sa.JSON(), create_type=False)


class JSONDomain(sa.types.TypeDecorator):
    """JSON values in the domain `json_domain` on PostgreSQL (psycopg reads a domain's
    values as its base type's, so they load as JSON), plain JSON elsewhere. SQLAlchemy's
    DOMAIN does not serialize values for its data type: this does."""

    impl = sa.JSON
    cache_ok = True

    def load_dialect_impl(self, dialect: sa.Dialect) -> sa.types.TypeEngine:
        if dialect.name == "postgresql":
            return JSON_DOMAIN
        return dialect.type_descriptor(sa.JSON())

    def process_bind_param(self, value: object, dialect: sa.Dialect) -> object:
        if dialect.name == "postgresql" and value is not None:
            return json.dumps(value)
        return value


def _domain_missing(_ddl: object, _target: object, bind: sa.Connection, **_kw: object) -> bool:
    return bind.dialect.name == "postgresql" and not bind.dialect.has_type(bind, "json_domain")


def _create_domain(metadata: sa.MetaData) -> None:
    create = sa.DDL("CREATE DOMAIN json_domain AS json")
    sa.event.listen(metadata, "before_create", create.execute_if(callable_=_domain_missing))
    drop = sa.DDL("DROP DOMAIN IF EXISTS json_domain")
    sa.event.listen(metadata, "after_drop", drop.execute_if(dialect="postgresql"))


def define(base: type, *, uuid_users: bool = False, ledger: dict | None = None) -> dict:
    """Map the models on `base` and return them by name."""
    _create_domain(base.metadata)
    models = _users_and_articles(base, uuid_users)
    link = models.pop("article_tag")
    models.update(_keys_and_values(base))
    models.update(_hierarchies(base))

    class Ledger(base):
        __tablename__ = "ledgers"
        __versioned__: dict = dict(ledger if ledger is not None else {"strategy": "subquery"})
        id = sa.Column(sa.Integer, primary_key=True, autoincrement=False)
        amount = sa.Column(sa.Numeric(12, 2))
        memo = sa.Column(sa.String(100))

    return {**models, "Ledger": Ledger, "article_tag": link}


def _users_and_articles(base: type, uuid_users: bool) -> dict:
    """The user class (UUID or integer key), tags, and articles linked to tags."""
    user_key = (
        sa.Column(sa.Uuid, primary_key=True, default=uuid.uuid4)
        if uuid_users
        else sa.Column(sa.Integer, primary_key=True, autoincrement=False)
    )

    class User(base):
        __tablename__ = "users"
        id = user_key
        name = sa.Column(sa.String(50))

    article_tag = sa.Table(
        "article_tag",
        base.metadata,
        sa.Column("article_id", sa.Integer, sa.ForeignKey("articles.id"), primary_key=True),
        sa.Column("tag_id", sa.Integer, sa.ForeignKey("tags.id"), primary_key=True),
    )

    class Tag(base):
        __tablename__ = "tags"
        __versioned__: dict = {}
        id = sa.Column(sa.Integer, primary_key=True, autoincrement=False)
        name = sa.Column(sa.String(50))

    class Article(base):
        __tablename__ = "articles"
        __versioned__: dict = {}
        id = sa.Column(sa.Integer, primary_key=True, autoincrement=False)
        title = sa.Column("display_title", sa.String(100))
        data = sa.Column(sa.JSON)
        tags = relationship(Tag, secondary=article_tag, order_by=Tag.id)

    return {"User": User, "Tag": Tag, "Article": Article, "article_tag": article_tag}


def _keys_and_values(base: type) -> dict:
    """Renamed columns, a UUID key with binary and JSON values, a composite text key."""

    class Renamed(base):
        __tablename__ = "renamed"
        __versioned__: dict = {}
        id = sa.Column("_id", sa.Integer, primary_key=True, autoincrement=False)
        name = sa.Column("display_name", sa.String(50))
        extra = sa.Column("x", sa.JSON)

    class Token(base):
        __tablename__ = "tokens"
        __versioned__: dict = {}
        key = sa.Column(sa.Uuid, primary_key=True)
        blob = sa.Column(sa.LargeBinary)
        score = sa.Column(sa.Float)
        doc = sa.Column(JSONish)
        shaped = sa.Column(JSONDomain)
        docs = sa.Column(sa.JSON().with_variant(postgresql.ARRAY(JSONish()), "postgresql"))

    class Note(base):
        __tablename__ = "notes"
        __versioned__: dict = {}
        ns = sa.Column(sa.String(20), primary_key=True)
        name = sa.Column(sa.Text, primary_key=True)
        body = sa.Column(sa.Text)

    return {"Renamed": Renamed, "Token": Token, "Note": Note}


def _hierarchies(base: type) -> dict:
    """Joined-table (Vehicle, Car) and single-table (Widget, Gadget) inheritance."""

    class Vehicle(base):
        __tablename__ = "vehicles"
        __versioned__: dict = {}
        id = sa.Column(sa.Integer, primary_key=True, autoincrement=False)
        kind = sa.Column(sa.String(20))
        wheels = sa.Column(sa.Integer)
        spec = sa.Column(sa.JSON)
        __mapper_args__ = {"polymorphic_on": kind, "polymorphic_identity": "vehicle"}

    class Car(Vehicle):
        __tablename__ = "cars"
        __versioned__: dict = {}
        id = sa.Column(sa.Integer, sa.ForeignKey("vehicles.id"), primary_key=True)
        doors = sa.Column(sa.Integer)
        __mapper_args__ = {"polymorphic_identity": "car"}

    class Widget(base):
        __tablename__ = "widgets"
        __versioned__: dict = {}
        id = sa.Column(sa.Integer, primary_key=True, autoincrement=False)
        type = sa.Column(sa.String(20))
        label = sa.Column(sa.String(50))
        size = sa.Column(sa.Integer)
        __mapper_args__ = {"polymorphic_on": type, "polymorphic_identity": "widget"}

    class Gadget(Widget):
        __versioned__: dict = {}
        gizmo = sa.Column(sa.String(20))  # in `widgets`, mapped on gadgets only
        __mapper_args__ = {"polymorphic_identity": "gadget"}

    return {"Vehicle": Vehicle, "Car": Car, "Widget": Widget, "Gadget": Gadget}
