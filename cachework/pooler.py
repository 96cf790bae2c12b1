"""What cachework does differently behind a connection pooler (PgBouncer and the like).

`CACHEWORK_DATABASE_POOLER` says how the server connections behind CACHEWORK_DATABASE_URL
are shared:

- `none` (default) or `session`: a client keeps one server connection for as long as it
  is connected, so nothing changes.
- `transaction`: a server connection is ours for one transaction only, then another
  client gets it. psycopg's automatic server-side prepared statements would then be
  prepared on one server connection and executed on another (`prepared statement "_pg3_3"
  does not exist`), so every engine cachework makes is given `prepare_threshold=None` (no
  prepared statements). cachework keeps no other session state: its locks are rows or
  transaction-level advisory locks, it issues no `SET`, no `LISTEN` and no temporary table.
- `statement` is refused: the import, the outbox relay and the fencing of cache writes
  need transactions of several statements.

The URL may also carry psycopg's own `prepare_threshold` (`?prepare_threshold=none`, or a
number: prepare after that many executions, 0 = at once), which SQLAlchemy would pass on as
a string (a `TypeError` inside psycopg): it is read here as psycopg means it and wins over
the pooler's default (a number only suits a pooler that tracks prepared statements, such
as PgBouncer 1.21+ with `max_prepared_statements`).

Pure functions of the setting and the URL: `cachework.settings` checks them at load (a
ConfigError naming the bad value), `cachework.database` and `celeryconfig` apply them.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

from cachework.errors import ConfigError, first_line

if TYPE_CHECKING:
    import sqlalchemy as sa

log = logging.getLogger(__name__)

NONE, SESSION, TRANSACTION, STATEMENT = "none", "session", "transaction", "statement"
POOLERS = (NONE, SESSION, TRANSACTION)
PARAM = "prepare_threshold"
_DISABLED = ("none", "null", "off", "")


def parse_pooler(raw: str | None, database_url: str) -> str:
    """The pooler mode named by CACHEWORK_DATABASE_POOLER (`raw`), checked against the
    database URL it applies to."""
    value = (raw or "").strip().lower() or NONE
    if value == STATEMENT:
        raise ConfigError(
            f"CACHEWORK_DATABASE_POOLER={raw!r} is not supported: cachework needs transactions "
            "of several statements (import, outbox relay, fenced cache writes); run the "
            "pooler in transaction or session mode"
        )
    if value not in POOLERS:
        raise ConfigError(
            f"CACHEWORK_DATABASE_POOLER={raw!r} is not one of none, session, transaction"
        )
    if value != NONE and not database_url.startswith("postgresql"):
        raise ConfigError(
            f"CACHEWORK_DATABASE_POOLER={raw!r} applies to a postgresql:// "
            "CACHEWORK_DATABASE_URL only (this one is not)"
        )
    return value


def _psycopg(url: str) -> bool:
    return url.split("://", 1)[0].lower() == "postgresql+psycopg"


def prepare_threshold(url: str, name: str = "CACHEWORK_DATABASE_URL") -> tuple[bool, int | None]:
    """(given, value) of the URL's `prepare_threshold` query parameter: a number of
    executions, or None (`none`/`off`: never prepare). ConfigError for anything else."""
    if "?" not in url:
        return False, None
    found = [v for k, v in parse_qsl(urlsplit(url).query, keep_blank_values=True) if k == PARAM]
    if not found:
        return False, None
    if len(found) > 1:
        raise ConfigError(f"{name} has {PARAM} {len(found)} times; give it once")
    raw = found[0]
    if raw.strip().lower() in _DISABLED:
        return True, None
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise ConfigError(
            f"{name} has {PARAM}={raw!r}: use a number of executions (0 or more) or none "
            "(no server-side prepared statements)"
        )
    return True, value


def connect_args(url: str, pooler: str = NONE) -> dict[str, Any]:
    """psycopg connect arguments for an engine on `url` (they override the URL's query,
    which SQLAlchemy passes on as strings): {} for any other driver."""
    if not _psycopg(url):
        return {}
    given, value = prepare_threshold(url)
    if given:
        return {PARAM: value}
    if pooler == TRANSACTION:
        return {PARAM: None}
    return {}


def result_engine_options(result_backend: str, pooler: str = NONE) -> dict[str, Any]:
    """Celery's `database_engine_options` for a `db+postgresql+psycopg://` result backend
    (its engines get the same connect arguments as ours); {} for any other backend."""
    if not result_backend.startswith("db+"):
        return {}
    args = connect_args(result_backend[3:], pooler)
    return {"connect_args": args} if args else {}


# SQLSTATEs of a prepared statement missing (26000) or already there (42P05): what psycopg's
# automatic prepared statements meet when a transaction pooler shares server connections.
_PREPARED_STATE = ("26000", "42P05")


def hint_pooler(engine: sa.Engine, pooler: str = NONE) -> sa.Engine:
    """Log once per engine, at the first such error, what to set: a transaction pooler in
    front of an engine that still prepares statements shows only as psycopg errors."""
    import sqlalchemy as sa

    hinted: list[bool] = []

    @sa.event.listens_for(engine, "handle_error")
    def _hint(context: sa.engine.ExceptionContext) -> None:
        orig = context.original_exception
        state = getattr(getattr(orig, "diag", None), "sqlstate", None)
        if hinted or state not in _PREPARED_STATE or '"_pg3_' not in str(orig):
            return
        hinted.append(True)
        # No secret in the line: the password hidden, the query (sslpassword=...) left out.
        where = engine.url.set(query={}).render_as_string(hide_password=True)
        log.error(
            "prepared statement errors from %s (%s): a pooler in transaction mode "
            "(PgBouncer pool_mode=transaction) seems to share server connections; set "
            "CACHEWORK_DATABASE_POOLER=transaction (now %s)",
            where,
            first_line(orig, 200, named=False),
            pooler,
        )

    return engine
