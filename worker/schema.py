"""Creating the tables a deployment needs: the app's models (with Continuum's) and ours.

The app's tables are created when missing (they are the app's: no migrations of ours);
cachework's own tables are created or upgraded to the head of their migrations
(`cachework.migrate`).
"""

from __future__ import annotations

import sqlalchemy as sa

from cachework import migrate
from cachework.importers.bootstrap import Models
from cachework.schema import own_metadata


def create_tables(engine: sa.Engine, models: Models) -> list[str]:
    """Create every missing table of the app and bring ours to head; returns the names of
    all tables it manages."""
    names: list[str] = []
    for metadata in models.metadatas:
        metadata.create_all(engine)
        names.extend(metadata.tables)
    migrate.upgrade(engine)
    names.extend(own_metadata().tables)
    return sorted(names)
