"""Creating the tables a deployment needs: the app's models (with Continuum's) and ours."""

from __future__ import annotations

import sqlalchemy as sa

from cache.schema import own_metadata
from worker.bootstrap import Models


def all_metadata(models: Models) -> list[sa.MetaData]:
    return [*models.metadatas, own_metadata()]


def create_tables(engine: sa.Engine, models: Models) -> list[str]:
    """Create every missing table; returns the names of all tables it manages."""
    names: list[str] = []
    for metadata in all_metadata(models):
        metadata.create_all(engine)
        names.extend(metadata.tables)
    return sorted(names)
