"""An app with every plugin that writes rows during a flush, set up as Continuum's
documentation shows: `make_versioned` with an integer-keyed user class, first thing."""

import sqlalchemy as sa  # noqa: F401
from sqlalchemy.orm import declarative_base
from sqlalchemy_continuum import make_versioned
from sqlalchemy_continuum.plugins import (
    PropertyModTrackerPlugin,
    TransactionChangesPlugin,
    TransactionMetaPlugin,
)

make_versioned(
    user_cls="User",
    plugins=[TransactionMetaPlugin(), TransactionChangesPlugin(), PropertyModTrackerPlugin()],
)

Base = declarative_base()

from tests.continuum_apps.shapes import define  # noqa: E402

globals().update(define(Base))
