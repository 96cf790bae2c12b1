"""The Continuum version importer: make every version table agree with its live table.

For each versioned model (in foreign-key dependency order) the live table is the source
and the *current* version of each key is the target of a `KeyedDiff`:

- validity strategy: the open version (`end_transaction_id IS NULL`); if a key has several
  open versions (inconsistent history) the newest one counts, and the key is reported;
- subquery strategy: the version with the highest `transaction_id`;
- a current version with operation_type 2 (delete) means "no row".

Changes become NEW version rows in ONE Continuum transaction (created only once a change is
known to exist): 0 for a live row without a current version, 1 for a changed row, 2 for a
current version whose live row is gone. Under the validity strategy the version each new
row supersedes is closed, as Continuum's own flush would (the delete version too when a row
is re-created). Everything is INSERT ... SELECT / UPDATE in the database, in the caller's
transaction, which `begin_import()` opens with the import lock and one snapshot.
"""

from __future__ import annotations

import datetime as dt
import decimal
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session
from sqlalchemy_continuum import version_class
from sqlalchemy_continuum.operation import Operation
from sqlalchemy_continuum.utils import get_versioning_manager, option

from cache.errors import NotFoundError, ValidationError
from importers.diff import Counts, DiffOptions, KeyedDiff, Progress, run_diffs, switched
from importers.locking import begin_import
from importers.statistics import refresh_stale_statistics

MAX_REPORTED_KEYS = 100
REMOTE_ADDR_MAX = 50


@dataclass
class ImportResult:
    """What a run did (or, for a dry run, would do); `as_dict()` is the task's JSON."""

    transaction_id: int | None
    dry_run: bool
    models: dict[str, Counts]
    warnings: list[str]
    repaired: dict[str, int] = field(default_factory=dict)
    inconsistent: dict[str, list[Any]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "transaction_id": self.transaction_id,
            "dry_run": self.dry_run,
            "models": {
                name: {**counts.as_dict(), "repaired": self.repaired.get(name, 0)}
                for name, counts in self.models.items()
            },
            "warnings": list(self.warnings),
            "inconsistent": {name: list(keys) for name, keys in self.inconsistent.items()},
        }


def is_versioned(cls: type) -> bool:
    return getattr(cls, "__versioned__", None) is not None


def select_models(classes: Sequence[type], names: Sequence[str] | None = None) -> list[type]:
    """The versioned models among `classes` (or the `names`d ones), parents first."""
    versioned = {c.__name__: c for c in classes if is_versioned(c)}
    if names is None:
        chosen = list(versioned.values())
    else:
        if isinstance(names, str) or not isinstance(names, list | tuple):
            raise ValidationError(
                f"models={names!r} must be a list of model names (or None for all)"
            )
        if not names:
            raise ValidationError(
                f"models={names!r} names no model; pass None to import every versioned model"
            )
        chosen = []
        for name in names:
            if not isinstance(name, str):
                raise ValidationError(f"models: {name!r} is not a model name (a string)")
            if name not in versioned:
                raise NotFoundError(
                    f"unknown versioned model {name!r}; valid names: "
                    f"{', '.join(sorted(versioned)) or '(none configured)'}"
                )
            if versioned[name] not in chosen:
                chosen.append(versioned[name])
    # Foreign-key order, parents first; ties broken by name so every run has one order.
    by_table = {c.__table__: c for c in sorted(chosen, key=lambda c: c.__name__)}
    return [by_table[t] for t in sa.sql.util.sort_tables(list(by_table))]


def _json_key(row: Sequence[Any]) -> Any:
    values = [_json_value(v) for v in row]
    return values[0] if len(values) == 1 else values


def _json_value(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, decimal.Decimal | uuid.UUID | dt.date | dt.datetime | dt.time):
        return str(value)
    return repr(value)


class _LazyTransaction:
    """The run's one Continuum transaction, created on first use only."""

    def __init__(
        self, session: Session, manager: Any, user: str | None, remote_addr: str | None,
        comment: str | None,
    ) -> None:  # fmt: skip
        self.session = session
        self.manager = manager
        self.user, self.remote_addr, self.comment = user, remote_addr, comment
        self.txn: Any = None

    @property
    def id(self) -> int:
        if self.txn is None:
            uow = self.manager.unit_of_work(self.session)
            txn = uow.create_transaction(self.session)
            if self.remote_addr is not None:
                txn.remote_addr = self.remote_addr
            meta: dict[str, str] = {}
            if self.user is not None:
                if "user_id" in sa.inspect(type(txn)).columns:
                    txn.user_id = self.user
                else:
                    meta["user"] = self.user
            if self.comment is not None:
                meta["comment"] = self.comment
            if meta:
                if not hasattr(txn, "meta"):
                    raise ValidationError(
                        "user/comment need Continuum's TransactionMetaPlugin (or a user class)"
                    )
                txn.meta = meta
            self.txn = txn
        return int(self.txn.id)


class VersionModel:
    """One versioned model as a diff target: its live table against its current versions."""

    def __init__(self, cls: type, txn: _LazyTransaction, repair: bool) -> None:
        mapper = sa.inspect(cls)
        if mapper.inherits is not None:
            raise ValidationError(
                f"model {cls.__name__} uses mapper inheritance, which the version import "
                "does not support"
            )
        self.cls = cls
        self.name = cls.__name__
        self.txn = txn
        self.repair = repair
        self.live: sa.Table = cls.__table__
        self.versions: sa.Table = version_class(cls).__table__
        self.strategy = option(cls, "strategy")
        self.tx = option(cls, "transaction_column_name")
        self.end = option(cls, "end_transaction_column_name")
        self.op = option(cls, "operation_type_column_name")
        self.keys = tuple(c.name for c in self.live.primary_key.columns)
        internal = {self.tx, self.end, self.op}
        self.columns = tuple(
            c.name
            for c in self.versions.c
            if c.name in self.live.c and c.name not in self.keys and c.name not in internal
        )
        self.validity = self.strategy == "validity"
        self.inconsistent: list[Any] = []
        self.warnings: list[str] = []
        self.extra_open = 0  # open versions that are not the newest of their key
        self.repaired = 0

    # --- the current version of each key -----------------------------------------------

    def current(self) -> sa.Subquery:
        """At most one row per key: the open version (validity) or the newest (subquery);
        when some key has several open versions, the newest of them."""
        v = self.versions
        where: list[sa.ColumnElement[bool]] = []
        if self.validity:
            where.append(v.c[self.end].is_(None))
        if not self.validity or self.extra_open:
            newer = v.alias("newer")
            inner = [newer.c[k] == v.c[k] for k in self.keys]
            inner.append(newer.c[self.tx] > v.c[self.tx])
            if self.validity:
                inner.append(newer.c[self.end].is_(None))
            where.append(~sa.exists(sa.select(sa.literal(1)).select_from(newer).where(*inner)))
        return sa.select(v).where(*where).subquery("cur")

    def diff(self) -> KeyedDiff:
        return KeyedDiff(
            source=self.live,
            target=self.current(),
            keys=self.keys,
            columns=self.columns,
            absent=lambda cur: cur.c[self.op] == Operation.DELETE,
        )

    # --- DiffTarget ----------------------------------------------------------------------

    def count(self, session: Session, options: DiffOptions) -> Counts:
        """Count with the cheap "open version" rule, checking in the same passes that no
        key has several open versions; only if one does, list them and count again with
        the newest-open rule."""
        self.warnings = []
        if not self.validity:
            return self.diff().count(session, options)
        diff = self.diff()
        created, updated, unchanged, rows = session.execute(diff.count_statement()).one()
        live = session.execute(sa.select(sa.func.count()).select_from(self.live)).scalar_one()
        groups, orphans, gone = session.execute(self._orphans()).one()
        if rows - live + orphans - groups > 0:
            self._find_inconsistent(session)
            counts = self.diff().count(session, options)
        else:
            counts = switched(created, updated, gone, unchanged, options)
        if self.repair:
            self.repaired = self.extra_open
        return counts

    def _orphans(self) -> sa.Select:
        """(keys, open versions, present open versions) of keys whose live row is gone."""
        v = self.versions
        live_row = sa.exists(
            sa.select(sa.literal(1))
            .select_from(self.live)
            .where(*(self.live.c[k] == v.c[k] for k in self.keys))
        )
        present = sa.case((v.c[self.op] != Operation.DELETE, 1), else_=0)
        per_key = (
            sa.select(sa.func.count().label("n"), sa.func.sum(present).label("gone"))
            .where(v.c[self.end].is_(None), ~live_row)
            .group_by(*(v.c[k] for k in self.keys))
            .subquery()
        )
        return sa.select(
            sa.func.count(),
            sa.func.coalesce(sa.func.sum(per_key.c.n), 0),
            sa.func.coalesce(sa.func.sum(per_key.c.gone), 0),
        )

    def _find_inconsistent(self, session: Session) -> None:
        """List the keys with several open versions and warn about them."""
        v = self.versions
        keys = [v.c[k] for k in self.keys]
        groups = (
            sa.select(*keys, sa.func.count().label("n"))
            .where(v.c[self.end].is_(None))
            .group_by(*keys)
            .having(sa.func.count() > 1)
        )
        rows = session.execute(groups.order_by(*keys).limit(MAX_REPORTED_KEYS + 1)).all()
        self.inconsistent = [_json_key(row[:-1]) for row in rows[:MAX_REPORTED_KEYS]]
        if len(rows) <= MAX_REPORTED_KEYS:
            found, self.extra_open = len(rows), sum(row[-1] - 1 for row in rows)
        else:
            g = groups.subquery()
            found, extra = session.execute(sa.select(sa.func.count(), sa.func.sum(g.c.n - 1))).one()
            self.extra_open = int(extra)
        shown = ", ".join(map(str, self.inconsistent[:20])) + (", ..." if found > 20 else "")
        action = (
            f"closing {self.extra_open} older open version(s)"
            if self.repair
            else "run with repair to close all but the newest"
        )
        self.warnings.append(
            f"{self.name}: {found} key(s) have several open versions (inconsistent history; "
            f"keys: {shown}); {action}"
        )

    def apply(self, session: Session, counts: Counts, options: DiffOptions) -> None:
        if self.repair and self.extra_open:
            self.repaired = self._repair(session)
            self.extra_open = 0
        if not counts.changes:
            return
        expected = counts.created + counts.updated
        changed = None
        if expected:
            columns = [*self.keys, *self.columns]
            changed = self.diff().changed_rows(
                options.create, options.update, columns, [self._tx_literal()]
            )
        written = self._write(session, counts.deleted > 0, changed)
        if written != (counts.deleted, expected):  # one snapshot makes this impossible
            raise RuntimeError(
                f"{self.name}: counted {counts.deleted} deletes and {expected} creates or "
                f"updates but wrote {written[0]} and {written[1]}"
            )

    def write(self, session: Session) -> Counts | None:
        """Write without a counting pass, in as many scans as the writes need anyway: two
        EXISTS probes (which stop at the first change) decide which inserts run at all,
        and the counts come from what was written. None (nothing written) when some key
        has several open versions: then the careful count-and-apply path runs."""
        self.warnings = []
        if self.validity and self._has_several_open(session):
            return None
        diff = self.diff()
        gone = self._exists(session, diff.gone_rows(list(self.keys)))
        changed = self._exists(session, diff.changed_rows(True, True, list(self.keys)))
        live = session.execute(sa.select(sa.func.count()).select_from(self.live)).scalar_one()
        if not (gone or changed):
            return Counts(unchanged=int(live))  # no change: no Continuum transaction
        rows = None
        if changed:
            columns = [*self.keys, *self.columns]
            rows = diff.changed_rows(True, True, columns, [self._tx_literal()])
        deleted, written = self._write(session, gone, rows)
        created = self._created_in_this_run(session) if written else 0
        return Counts(
            created=created,
            updated=written - created,
            deleted=deleted,
            unchanged=int(live) - written,
        )

    def _tx_literal(self) -> sa.ColumnElement[int]:
        return sa.literal(self.txn.id, sa.BigInteger)

    def _has_several_open(self, session: Session) -> bool:
        v = self.versions
        several = (
            sa.select(sa.literal(1))
            .where(v.c[self.end].is_(None))
            .group_by(*(v.c[k] for k in self.keys))
            .having(sa.func.count() > 1)
            .limit(1)
        )
        return session.execute(several).first() is not None

    @staticmethod
    def _exists(session: Session, rows: sa.Select) -> bool:
        return bool(session.execute(sa.select(sa.exists(rows))).scalar())

    def _created_in_this_run(self, session: Session) -> int:
        """Create versions (operation 0) this run wrote: the transaction id is indexed."""
        v = self.versions
        created = sa.select(sa.func.count()).where(
            v.c[self.tx] == self.txn.id, v.c[self.op] == Operation.INSERT
        )
        return int(session.execute(created).scalar_one())

    def _write(self, session: Session, gone: bool, changed: sa.Select | None) -> tuple[int, int]:
        """Insert the delete versions (when `gone`) and the create/update versions that
        `changed` selects (when given), then close what they supersede; returns how many
        of each were written. The run's Continuum transaction is made here."""
        tx = self._tx_literal()
        names = [*self.keys, *self.columns, self.tx, self.op]
        deleted = written = 0
        if gone:
            rows = self.diff().gone_rows(
                [*self.keys, *self.columns], [tx, sa.literal(Operation.DELETE, sa.SmallInteger)]
            )
            deleted = _rowcount(session, sa.insert(self.versions).from_select(names, rows))
        if changed is not None:
            # The delete versions only touch keys without a live row: no tx filter needed.
            written = _rowcount(session, sa.insert(self.versions).from_select(names, changed))
        if self.validity:
            self._close_superseded(session, self.txn.id)
        return deleted, written

    # --- validity bookkeeping ----------------------------------------------------------------

    def _close_superseded(self, session: Session, tx: int) -> None:
        """Close the version each new row supersedes (its key's newest open version)."""
        v = self.versions
        new = v.alias("new")
        where = [
            v.c[self.end].is_(None),
            v.c[self.tx] != tx,
            sa.exists(
                sa.select(sa.literal(1))
                .select_from(new)
                .where(new.c[self.tx] == tx, *(new.c[k] == v.c[k] for k in self.keys))
            ),
        ]
        if self.extra_open:  # leave older open versions alone (reported, not repaired)
            newer = v.alias("newer")
            where.append(
                ~sa.exists(
                    sa.select(sa.literal(1))
                    .select_from(newer)
                    .where(
                        *(newer.c[k] == v.c[k] for k in self.keys),
                        newer.c[self.end].is_(None),
                        newer.c[self.tx] > v.c[self.tx],
                        newer.c[self.tx] != tx,
                    )
                )
            )
        session.execute(sa.update(v).where(*where).values({self.end: tx}))

    def _repair(self, session: Session) -> int:
        """Close every open version that has a newer open one, with the next version's id
        as its end (what Continuum's flush would have written)."""
        v = self.versions
        nxt, newer = v.alias("nxt"), v.alias("newer")
        next_tx = (
            sa.select(sa.func.min(nxt.c[self.tx]))
            .where(*(nxt.c[k] == v.c[k] for k in self.keys), nxt.c[self.tx] > v.c[self.tx])
            .scalar_subquery()
        )
        has_newer_open = sa.exists(
            sa.select(sa.literal(1))
            .select_from(newer)
            .where(
                *(newer.c[k] == v.c[k] for k in self.keys),
                newer.c[self.end].is_(None),
                newer.c[self.tx] > v.c[self.tx],
            )
        )
        stmt = sa.update(v).where(v.c[self.end].is_(None), has_newer_open)
        return _rowcount(session, stmt.values({self.end: next_tx}))


def _rowcount(session: Session, statement: sa.Executable) -> int:
    """Rows a statement wrote (SQLAlchemy 2.1 keeps INSERT rowcounts only when asked)."""
    return session.execute(statement.execution_options(preserve_rowcount=True)).rowcount


def _check_text(name: str, value: Any, limit: int | None = None) -> None:
    if value is not None and not isinstance(value, str):
        raise ValidationError(f"{name}={value!r} must be a string or None")
    if limit is not None and value is not None and len(value) > limit:
        raise ValidationError(f"{name}={value[:60]!r}... is longer than {limit} characters")


def import_versions(
    session: Session,
    model_classes: Sequence[type],
    *,
    names: Sequence[str] | None = None,
    user: str | None = None,
    remote_addr: str | None = None,
    comment: str | None = None,
    dry_run: bool = False,
    create: bool = True,
    update: bool = True,
    delete: bool = True,
    max_changes: int | None = None,
    repair: bool = False,
    progress: Progress | None = None,
) -> ImportResult:
    """Bring the version tables of `model_classes` (or the `names`d ones) in line with
    their live tables, in `session`'s transaction, which must not have begun yet.

    The caller commits (or, on any error, rolls back): the run is all-or-nothing only
    together with that. Bad input raises `ValidationError`/`NotFoundError` before anything
    is touched; `LockedError` when another import is running.
    """
    options = DiffOptions(create, update, delete, dry_run, max_changes)
    _check_text("user", user)
    _check_text("remote_addr", remote_addr, REMOTE_ADDR_MAX)
    _check_text("comment", comment)
    if not isinstance(repair, bool):
        raise ValidationError(f"repair={repair!r} must be true or false")
    models = select_models(model_classes, names)
    if not models:
        return ImportResult(None, dry_run, {}, ["no versioned models configured"])
    manager = get_versioning_manager(models[0])
    txn = _LazyTransaction(session, manager, user, remote_addr, comment)
    targets = [VersionModel(cls, txn, repair) for cls in models]
    begin_import(session, mapper=models[0])
    refresh_stale_statistics(session, [t for m in targets for t in (m.live, m.versions)])
    result = run_diffs(session, targets, options, progress)
    if txn.txn is not None or any(t.repaired for t in targets):
        session.flush()
    return ImportResult(
        transaction_id=None if txn.txn is None else txn.id,
        dry_run=dry_run,
        models=result.models,
        warnings=result.warnings,
        repaired={t.name: t.repaired for t in targets},
        inconsistent={t.name: t.inconsistent for t in targets if t.inconsistent},
    )
