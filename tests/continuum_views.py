"""What the Continuum differential test (tests/continuum_differential.py) compares between
its two databases: the version and transaction tables row by row, what Continuum's API
reads, and `revert()` of each version, transaction ids mapped to the steps that made them."""

from __future__ import annotations

import datetime as dt
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session
from sqlalchemy_continuum import version_class

from tests.continuum_app import POOLS, App, family


def transaction_ids(session: Session) -> list[int]:
    return list(session.scalars(sa.text('SELECT id FROM "transaction" ORDER BY id')))


def _sortable(row: tuple) -> str:
    return repr([(type(v).__name__, repr(v)) for v in row])


def tables_view(app: App, session: Session, steps: dict[int, int]) -> dict[str, list]:
    """Every version table and transaction table, transaction ids mapped to steps."""
    out = {}
    for table in app.metadata.sorted_tables:
        if not (table.name.endswith("_version") or table.name.startswith("transaction")):
            continue
        names = [c.name for c in table.c]
        rows = []
        for row in session.execute(sa.select(table)):
            values = []
            for name, value in zip(names, row, strict=True):
                if name in ("transaction_id", "end_transaction_id") or (
                    table.name == "transaction" and name == "id"
                ):
                    value = None if value is None else steps.get(value, f"tx?{value}")
                if table.name == "transaction" and name == "issued_at":
                    value = isinstance(value, dt.datetime)
                values.append((name, value))
            rows.append(tuple(values))
        out[table.name] = sorted(rows, key=_sortable)
    return out


def api_view(app: App, session: Session, steps: dict[int, int]) -> dict[str, Any]:
    """What Continuum's API reads: per key, its versions with operation, changeset,
    previous/next, the tags of article versions and the live object's `versions`."""

    def step(txid: int | None) -> Any:
        return None if txid is None else steps.get(txid, f"tx?{txid}")

    out: dict[str, Any] = {}
    for name in ("Tag", "Article", "Renamed", "Token", "Note", "Vehicle", "Car", "Widget",
                 "Gadget", "Ledger"):  # fmt: skip
        try:
            out.update(_api_of(app.cls(name), name, session, step))
        except Exception as exc:  # e.g. NullDelete's versions without a discriminator
            session.rollback()  # Continuum cannot load: the same failure on both sides
            out[name] = type(exc).__name__
    return out


def _api_of(cls: type, name: str, session: Session, step: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    vcls = version_class(cls)
    live = sa.inspect(cls)
    keys = [getattr(vcls, live.get_property_by_column(c).key) for c in live.primary_key]
    query = sa.select(vcls).order_by(*keys, vcls.transaction_id)
    for version in session.scalars(query):
        if type(version) is not vcls:
            continue  # read through its own class
        key = tuple(getattr(version, k.key) for k in keys)
        item = [
            step(version.transaction_id),
            version.operation_type,
            sorted(version.changeset.items()),
            step(version.previous and version.previous.transaction_id),
            step(version.next and version.next.transaction_id),
        ]
        if name == "Article":
            item.append([t.id for t in version.tags])
        out.setdefault(f"{name}{key}", []).append(item)
    for key in POOLS.get(name, POOLS.get(family(name), [])):
        obj = session.get(cls, key)
        if obj is not None and type(obj) is cls:
            out[f"{name}{key} live"] = [step(v.transaction_id) for v in obj.versions]
    return out


def revert_view(app: App, session: Session) -> list:
    """Each article and car reverted to each of its versions (rolled back afterwards)."""
    out = []
    for name in ("Article", "Car"):
        vcls = version_class(app.cls(name))
        try:
            ids = [(v.id, v.transaction_id) for v in session.scalars(sa.select(vcls))
                   if type(v) is vcls]  # fmt: skip
        except Exception as exc:  # the same failure on both sides (see api_view)
            session.rollback()
            out.append((name, type(exc).__name__))
            continue
        for ident, txid in sorted(ids):
            version = session.get(vcls, (ident, txid))
            if version is None:
                continue
            try:
                obj = version.revert(relations=["tags"] if name == "Article" else [])
                session.flush()
            except Exception as exc:  # the same refusal on both sides counts as equal
                out.append((name, ident, type(exc).__name__))
                session.rollback()
                continue
            state = None
            if obj is not None and sa.inspect(obj).persistent:
                state = {a.key: a.value for a in sa.inspect(obj).attrs if a.key != "versions"}
                state = {
                    k: ([t.id for t in v] if k == "tags" else v)
                    for k, v in state.items()
                    if not isinstance(v, list | tuple) or k == "tags"
                }
            out.append((name, ident, sorted(state.items()) if state else None))
            session.rollback()
    return out
