"""The slow source of truth of a cached table: any SQLAlchemy select over an Engine.

The select (a table, a join, a filtered query) is wrapped as a subquery, so specs become
plain WHERE conditions on its output columns whatever its shape; PostgreSQL and SQLite
flatten the subquery, so an indexed column stays indexed. Each fetch is one statement on
one pooled connection in autocommit mode, returned at once (none is held between calls).
"""

from __future__ import annotations

from collections.abc import Sequence
from types import MappingProxyType

import sqlalchemy as sa

from cachework.cache.tables.indexes import Spec
from cachework.errors import ValidationError, transient_errors
from cachework.records import Record, freeze

CHUNK = 1000  # values per IN (...) list


class SelectSource:
    """Records of `select` over `engine`, fetched by spec."""

    def __init__(self, engine: sa.Engine, select: sa.Select | sa.Table | sa.FromClause) -> None:
        if isinstance(select, sa.FromClause) and not isinstance(select, sa.Subquery):
            select = sa.select(select)
        if not isinstance(select, sa.Select):
            raise ValidationError(f"source {select!r} is not a SQLAlchemy select or table")
        self.engine = engine
        self.select = select
        self._sub = select.subquery("cached_source")
        self.columns: tuple[str, ...] = tuple(self._sub.c.keys())
        # JSON and ARRAY values are mutable containers: records hold frozen copies of them.
        self._frozen = tuple(
            i for i, col in enumerate(self._sub.c) if isinstance(col.type, sa.JSON | sa.ARRAY)
        )
        self.fetches = 0

    def column(self, name: str) -> sa.ColumnElement:
        if name not in self._sub.c:
            raise ValidationError(f"column {name!r} is not in the source; columns: {self.columns}")
        return self._sub.c[name]

    def python_type(self, name: str) -> type | None:
        """The Python type of column `name`, or None when the SQL type does not say."""
        try:
            return self.column(name).type.python_type
        except NotImplementedError:
            return None

    def condition(self, spec: Spec, column: str) -> sa.ColumnElement[bool]:
        """The WHERE condition naming the records of `spec` (on record column `column`)."""
        if spec.everything:
            return sa.true()
        col = self.column(column)
        if spec.values is not None:
            values = [v for v in spec.values if v is not None]
            if len(values) == 1:  # `=` plans and runs faster than a one-element IN
                parts = [col == values[0]]
            else:
                parts = [col.in_(values[i : i + CHUNK]) for i in range(0, len(values), CHUNK)]
            if len(values) != len(spec.values):
                parts.append(col.is_(None))
            return sa.or_(*parts) if parts else sa.false()
        parts = [col.is_not(None)]
        if spec.ge is not None:
            parts.append(col >= spec.ge)
        if spec.lt is not None:
            parts.append(col < spec.lt)
        return sa.and_(*parts)

    def fetch(
        self,
        specs: Sequence[tuple[Spec, str]],
        within: tuple[Spec, str] | None = None,
        order_by: Sequence[str] = (),
    ) -> list[Record]:
        """Records named by any of `specs` (each with its column), limited to `within`,
        sorted by the `order_by` columns."""
        conditions = [self.condition(spec, column) for spec, column in specs]
        where = conditions[0] if len(conditions) == 1 else sa.or_(*conditions)
        if within is not None and not within[0].everything:
            where = sa.and_(where, self.condition(*within))
        query = sa.select(self._sub).where(where)
        if order_by:
            query = query.order_by(*(self.column(name) for name in order_by))
        return self._run(query)

    def _record(self, keys: tuple[str, ...], row: Sequence) -> Record:
        values = list(row)
        for i in self._frozen:
            values[i] = freeze(values[i])
        return MappingProxyType(dict(zip(keys, values, strict=True)))

    def _run(self, query: sa.Select) -> list[Record]:
        self.fetches += 1
        # One statement needs no transaction: autocommit spares the BEGIN and the ROLLBACK
        # on release, so a refresh is one round trip.
        with (
            transient_errors("cached table source"),
            self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn,
        ):
            result = conn.execute(query)
            keys = tuple(result.keys())
            if self._frozen and keys == self.columns:
                return [self._record(keys, row) for row in result]
            return [MappingProxyType(dict(zip(keys, row, strict=True))) for row in result]
