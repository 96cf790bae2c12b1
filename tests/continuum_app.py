"""The app under test of the Continuum differential test (tests/continuum_differential.py):
the pools its steps draw keys and values from, and the app's classes."""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy_continuum import versioning_manager
from sqlalchemy_continuum.plugins import TransactionMetaPlugin

from cachework.importers.bootstrap import bootstrap

TOKENS = [uuid.UUID(int=1), uuid.UUID(int=2)]
POOLS: dict[str, list[Any]] = {
    "Tag": [1, 2, 3],
    "Article": [1, 2, 3],
    "Renamed": [1, 2],
    "Token": TOKENS,
    "Note": [("a", "x"), ("a", "y"), ("b", "x")],
    "Vehicle": [1, 2, 3],  # Vehicle and Car share the key space (one base table)
    "Widget": [1, 2, 3],  # Widget and Gadget share the table
    "Ledger": [1, 2],
}
FAMILIES = {"Vehicle": ["Vehicle", "Car"], "Widget": ["Widget", "Gadget"]}
JSONS = [None, {"k": 1}, {"k": [1, 2]}, [1, "two"], "text", 3]
VALUES: dict[str, dict[str, list[Any]]] = {
    "Tag": {"name": ["red", "blue", None]},
    "Article": {"title": ["A", "B", None], "data": JSONS},
    "Renamed": {"name": ["x", "y", None], "extra": JSONS},
    "Token": {
        "blob": [b"", b"\x00\x01", None],
        "score": [0.5, 1.25, None],
        "doc": JSONS,
        "shaped": JSONS,
        "docs": [None, [], [{"k": 1}], [{"k": 1}, "two"], [3]],  # json[] on PostgreSQL
    },
    "Note": {"body": ["one", "two", None]},
    "Vehicle": {"wheels": [2, 4, None], "spec": JSONS},
    "Car": {"wheels": [2, 4, None], "spec": JSONS, "doors": [3, 5, None]},
    "Widget": {"label": ["l1", "l2", None], "size": [1, 2, None]},
    "Gadget": {"label": ["l1", "l2", None], "size": [1, 2, None], "gizmo": ["g", None]},
    "Ledger": {"amount": [Decimal("1.00"), Decimal("2.50"), None], "memo": ["m", None]},
}
REMOTE = [None, "10.0.0.1", "10.0.0.2"]
COMMENTS = [None, "first", "second"]  # TransactionMeta's `comment`, where the app has it


class App:
    """The app's classes, loaded through cachework's bootstrap (the app's own set-up)."""

    def __init__(self, module: str) -> None:
        self.models = bootstrap((module,))
        self.by_name = self.models.by_name()
        self.metadata = self.models.metadatas[0]
        self.uuid_users = isinstance(sa.inspect(self.by_name["User"]).primary_key[0].type, sa.Uuid)
        self.users = [uuid.UUID(int=10), uuid.UUID(int=11)] if self.uuid_users else [10, 11]
        self.link_table = self.metadata.tables["article_tag"]
        self.has_meta = any(
            isinstance(p, TransactionMetaPlugin) for p in versioning_manager.plugins
        )

    def cls(self, name: str) -> type:
        return self.by_name[name]


def family(name: str) -> str:
    return next((f for f, members in FAMILIES.items() if name in members), name)
