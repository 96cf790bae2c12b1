"""The one Continuum transaction record of a version import run (user, remote address,
comment), made through Continuum's own unit of work only once a change is known."""

from __future__ import annotations

import uuid
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session
from sqlalchemy_continuum.plugins import TransactionChangesPlugin

from cachework.errors import NotFoundError, ValidationError
from cachework.importers.request import ImportRequest


class RunTransaction:
    """The run's one Continuum transaction: `begin()` makes it (once) through Continuum's
    unit of work, so plugins' `transaction_args` apply; then the run's user, remote
    address and comment go on it."""

    def __init__(self, session: Session, manager: Any, request: ImportRequest) -> None:
        self.session = session
        self.manager = manager
        self.user, self.remote_addr = request.user, request.remote_addr
        self.comment = request.comment
        self.user_key: Any = None
        self.txn: Any = None
        cls = manager.transaction_cls
        columns = sa.inspect(cls).columns if isinstance(cls, type) else {}
        self.user_column = columns.get("user_id")
        self.has_meta = hasattr(cls, "meta")
        self.changes_model = next(
            (p.model_class for p in manager.plugins if isinstance(p, TransactionChangesPlugin)),
            None,
        )

    def check(self) -> None:
        """Refuse (before anything is written) a user or comment this set-up cannot
        record, and a user key that is not the user class's key type or not a user."""
        needs_meta = self.comment is not None or (
            self.user is not None and self.user_column is None
        )
        if needs_meta and not self.has_meta:
            raise ValidationError(
                "user/comment need Continuum's TransactionMetaPlugin (or, for the user, "
                "a user class) in the app's make_versioned() call"
            )
        if self.user is not None and self.user_column is not None:
            self.user_key = self._user_key(self.user)

    def _user_key(self, user: str) -> Any:
        column = self.user_column
        try:
            python_type = column.type.python_type
        except NotImplementedError:
            python_type = str
        try:
            if python_type is int:
                value: Any = int(user)
            elif python_type is uuid.UUID:
                value = uuid.UUID(user)
            else:
                value = python_type(user)
        except (TypeError, ValueError):
            raise ValidationError(
                f"user={user!r} is not a valid {python_type.__name__} (the type of the user "
                "class's key, which Continuum's transaction.user_id refers to)"
            ) from None
        relationship = sa.inspect(self.manager.transaction_cls).relationships.get("user")
        if relationship is not None:
            user_cls = relationship.mapper.class_
            if self.session.get(user_cls, value) is None:
                raise NotFoundError(f"user={user!r}: no {user_cls.__name__} with that key")
        return value

    @property
    def id(self) -> int | None:
        return None if self.txn is None else int(self.txn.id)

    def begin(self) -> int:
        """The transaction's id; it is made (and its row inserted) on the first call."""
        if self.txn is None:
            uow = self.manager.unit_of_work(self.session)
            txn = uow.create_transaction(self.session)
            if self.remote_addr is not None:
                txn.remote_addr = self.remote_addr
            meta: dict[str, str] = {}
            if self.user is not None:
                if self.user_column is not None:
                    txn.user_id = self.user_key
                else:
                    meta["user"] = self.user
            if self.comment is not None:
                meta["comment"] = self.comment
            if meta:
                txn.meta = meta
            self.txn = txn
        return int(self.txn.id)

    def record_changes(self, entities: set[str]) -> None:
        """TransactionChanges' rows: one per class name changed in the transaction."""
        if self.changes_model is None or self.txn is None or not entities:
            return
        table = self.changes_model.__table__
        self.session.execute(
            sa.insert(table),
            [{"transaction_id": self.id, "entity_name": name} for name in sorted(entities)],
        )
