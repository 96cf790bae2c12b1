"""An app on the subquery strategy manager-wide (one model back on validity), with a
UUID-keyed user class and the plugins that change version rows: PropertyModTracker,
NullDelete (delete versions keep only the key), TransactionChanges; no TransactionMeta."""

from sqlalchemy.orm import declarative_base
from sqlalchemy_continuum import make_versioned
from sqlalchemy_continuum.plugins import (
    NullDeletePlugin,
    PropertyModTrackerPlugin,
    TransactionChangesPlugin,
)

make_versioned(
    user_cls="User",
    plugins=[TransactionChangesPlugin(), PropertyModTrackerPlugin(), NullDeletePlugin()],
    options={"strategy": "subquery"},
)

Base = declarative_base()

from tests.continuum_apps.shapes import define  # noqa: E402

globals().update(define(Base, uuid_users=True, ledger={"strategy": "validity"}))
