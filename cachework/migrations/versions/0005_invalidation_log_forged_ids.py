"""invalidation_log: refuse an id its sequence did not hand out, even an explicit one.

Revision 0003 made PostgreSQL's `id` GENERATED ALWAYS, but an INSERT with `OVERRIDING
SYSTEM VALUE`, and COPY, still take an explicit id; on SQLite an UPDATE could still move
an id above the AUTOINCREMENT counter. One such row with a high id put every reader's
cursor past all later events (issue 18, item 6). Readers no longer follow such an id
(`cachework.cache.invalidation.db_log`); this revision also makes the database refuse it, so the
one who writes it gets the error:

- PostgreSQL: a BEFORE INSERT trigger refuses an id above the sequence's last value (a
  SECURITY DEFINER function: it reads the sequence as its owner, whatever role inserts);
- SQLite: a BEFORE UPDATE trigger refuses a changed id.

A log made at head (by `create_all`) has them already; they are made again here (the
function replaced, the trigger dropped if there and created). Rows a log holds already
are left as they are: readers never follow one above the sequence.

Downgrade drops the trigger (and the PostgreSQL function).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

# The DDL as the code makes it (one definition). Should it ever change, the change gets a
# revision of its own and this one keeps today's text (revisions never change).
from cachework.schema import PG_HANDED_OUT, SQLITE_FIXED_IDS, ddl

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

TABLE = "invalidation_log"
PG_FUNCTION, PG_TRIGGER = PG_HANDED_OUT


def upgrade() -> None:
    conn = op.get_bind()
    if conn.dialect.name == "postgresql":
        conn.execute(ddl(PG_HANDED_OUT[PG_FUNCTION]))
        conn.execute(sa.text(f"DROP TRIGGER IF EXISTS {PG_TRIGGER} ON {TABLE}"))
        conn.execute(ddl(PG_HANDED_OUT[PG_TRIGGER]))
    elif conn.dialect.name == "sqlite":
        for name, statement in SQLITE_FIXED_IDS.items():
            conn.execute(sa.text(f"DROP TRIGGER IF EXISTS {name}"))
            conn.execute(ddl(statement))


def downgrade() -> None:
    conn = op.get_bind()
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text(f"DROP TRIGGER IF EXISTS {PG_TRIGGER} ON {TABLE}"))
        conn.execute(sa.text(f"DROP FUNCTION IF EXISTS {PG_FUNCTION}()"))
    elif conn.dialect.name == "sqlite":
        for name in SQLITE_FIXED_IDS:
            conn.execute(sa.text(f"DROP TRIGGER IF EXISTS {name}"))
