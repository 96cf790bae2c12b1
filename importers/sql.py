"""Small SQL building blocks of the version import: keys, counts, and the comparison of
a live value with a version's, which some PostgreSQL types cannot do with a plain `=`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Mapper, Session

from cachework.records import json_value


def json_key(row: Sequence[Any]) -> Any:
    """A reported key in cachework's one JSON form of values (cachework.records.json_value)."""
    values = [json_value(v) for v in row]
    return values[0] if len(values) == 1 else values


def rowcount(session: Session, statement: sa.Executable) -> int:
    """Rows a statement wrote (SQLAlchemy 2.1 keeps INSERT rowcounts only when asked)."""
    return session.execute(statement.execution_options(preserve_rowcount=True)).rowcount


def exists(session: Session, rows: sa.Select) -> bool:
    return bool(session.execute(sa.select(sa.exists(rows))).scalar())


def count(session: Session, table: sa.FromClause, *where: Any) -> int:
    return int(
        session.execute(sa.select(sa.func.count()).select_from(table).where(*where)).scalar()
    )


def same_key(left: Sequence[Any], right: Sequence[Any]) -> list[Any]:
    """Column-by-column equality of two keys."""
    return [a == b for a, b in zip(left, right, strict=True)]


def replace_columns(expression: Any, mapping: dict[sa.Column, Any]) -> Any:
    """`expression` with the columns of `mapping` replaced."""
    return sa.sql.visitors.replacement_traverse(
        expression,
        {},
        lambda element: mapping.get(element) if isinstance(element, sa.Column) else None,
    )


def maps(mapper: Mapper, column: sa.Column) -> bool:
    """Whether `mapper` maps `column` (a single-table subclass may not)."""
    try:
        mapper.get_property_by_column(column)
    except sa.orm.exc.UnmappedColumnError:
        return False
    return True


# PostgreSQL types (by SQL name) without an equality operator, or whose `=` is not equality
# of value (box and circle compare areas, path the number of points): compared as text.
# json has none either, but compares as jsonb (below).
WITHOUT_EQUALITY = frozenset(
    {"xml", "jsonpath", "point", "polygon", "box", "circle", "path", "txid_snapshot",
     "pg_snapshot"}
)  # fmt: skip


def stored_type(type_: sa.types.TypeEngine, dialect: sa.Dialect) -> sa.types.TypeEngine:
    """The type the database stores `type_` as, which is where it looks up `=`: a
    variant's (`with_variant`), a TypeDecorator's implementation (what its
    `load_dialect_impl` chooses) and a PostgreSQL domain's data type, however nested."""
    impl = type_.dialect_impl(dialect)
    while True:
        if isinstance(impl, sa.types.TypeDecorator):
            impl = impl.impl_instance.dialect_impl(dialect)
        elif isinstance(impl, postgresql.DOMAIN):
            impl = sa.types.to_instance(impl.data_type).dialect_impl(dialect)
        else:
            return impl


def _sql_name(type_: sa.types.TypeEngine, dialect: sa.Dialect) -> str | None:
    """The type's SQL name, lower case, without modifiers (`None`: it has no DDL)."""
    try:
        spec = dialect.type_compiler_instance.process(type_)
    except (sa.exc.CompileError, NotImplementedError):
        return None
    return spec.split("(")[0].strip().lower()


def equality_type(type_: sa.types.TypeEngine, dialect: sa.Dialect) -> sa.types.TypeEngine | None:
    """What PostgreSQL must cast a value of `type_` to before comparing it (`None`: it
    compares as it is). Arrays compare element-wise, so an array casts its elements."""
    stored = stored_type(type_, dialect)
    if isinstance(stored, sa.ARRAY):
        item = equality_type(stored.item_type, dialect)
        return None if item is None else postgresql.ARRAY(item)
    if isinstance(stored, sa.JSON):
        return None if isinstance(stored, postgresql.JSONB) else postgresql.JSONB()
    if _sql_name(stored, dialect) in WITHOUT_EQUALITY:
        return sa.Text()
    return None


def comparable(column: Any, type_: sa.types.TypeEngine, dialect: sa.Dialect) -> Any:
    """`column` in a form SQL can compare for equality. On PostgreSQL, `json` has no
    equality operator, so it compares as `jsonb` (semantic equality, as Python's `==` on
    the loaded values); the few other types without a true one (`xml`, `jsonpath`,
    geometric types) compare as their text; also when the column's type reaches them
    through a TypeDecorator, a variant, a domain or an array, since PostgreSQL looks the
    operator up on the stored type. Every other type has one (binary and pickled values
    compare as bytes); SQLite compares anything (it stores JSON as text)."""
    if dialect.name != "postgresql":
        return column
    target = equality_type(type_, dialect)
    return column if target is None else sa.cast(column, target)


def differs(a: Any, b: Any, type_: sa.types.TypeEngine, dialect: sa.Dialect) -> Any:
    """SQL: `a` and `b` (of `type_`) are not equal, NULL counting as a value."""
    return comparable(a, type_, dialect).is_distinct_from(comparable(b, type_, dialect))
