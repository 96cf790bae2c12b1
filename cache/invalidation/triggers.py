"""PostgreSQL triggers that write the outbox rows for writes the ORM never sees (raw SQL,
bulk loads, other programs): opt-in, through `cachework triggers install|remove|status`.

Each base table a cached table depends on (see `cachework.cache.invalidation.tracking`) gets
statement-level AFTER triggers with transition tables: one for INSERT, UPDATE and DELETE
each (PostgreSQL allows transition tables only on single-event triggers) and one for
TRUNCATE. Each fires once per statement and inserts at most one outbox row per dependent
cached table, in the writer's transaction (the row exists if and only if the statement
commits), with the same JSON as `publish()` and ORM tracking:

- a keyed dependency names the distinct old and new values of its column among the rows
  the statement touched; more than `max_keys` rows (CACHEWORK_INVALIDATION_MAX_KEYS at
  install time) invalidate the whole cached table instead;
- a whole-table dependency, and TRUNCATE, invalidate the whole cached table;
- a statement that touched no row writes nothing.

Cost on writes: PostgreSQL keeps the statement's old and/or new rows in a tuplestore for
the transition tables (in memory up to work_mem, then spilled to disk), and the trigger
reads them once to count (stopping at max_keys + 1) and, when small enough, once more to
collect distinct keys; then one outbox INSERT. See bench/README.md for measured figures.
The functions are SECURITY DEFINER (owned by the role that installed them, with a fixed
search_path), so a writer needs no rights on the outbox.

Replica mode: ordinary triggers do not fire in a session with `session_replication_role =
replica` (a logical-replication subscriber's apply worker, restores and loaders that set
it). That stays the default: such writes were announced where they were made, and a
subscriber's trigger rows would collide with a replicated `invalidation_outbox`'s ids.
`install(..., always=True)` makes them fire there too (ENABLE ALWAYS), for a subscriber
that serves cached tables of its own; `status` reports each table's mode and
`replication_role` what new sessions start with.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass

import sqlalchemy as sa

from cachework.cache.invalidation.dependencies import Dependency
from cachework.errors import ConfigError, NotFoundError

PREFIX = "cachework_inv"
OPS = {"insert": "INSERT", "update": "UPDATE", "delete": "DELETE", "truncate": "TRUNCATE"}
INTEGER_TYPES = {"smallint", "integer", "bigint"}


@dataclass(frozen=True)
class TableTriggers:
    """What `status()` reports for one base table."""

    base: str
    cached: tuple[str, ...]
    installed: tuple[str, ...]  # the operations whose trigger exists
    current: bool  # installed for exactly the dependencies and max_keys asked about
    fires: str = ""  # "origin" (ordinary), "always" (replica mode too), "disabled", "mixed"


def _require_postgresql(engine: sa.Engine) -> None:
    if engine.dialect.name != "postgresql":
        raise ConfigError(
            f"invalidation triggers need PostgreSQL; CACHEWORK_DATABASE_URL is "
            f"{engine.dialect.name} (track ORM writes with cachework.cache.invalidation.track "
            "instead)"
        )


def _by_base(deps: Iterable[Dependency]) -> dict[str, list[Dependency]]:
    out: dict[str, list[Dependency]] = {}
    for dep in deps:
        out.setdefault(dep.base, []).append(dep)
    return out


def _function(base: str, op: str) -> str:
    digest = hashlib.sha1(base.encode()).hexdigest()[:12]
    return f"{PREFIX}_{op}_{digest}"


def _spec(deps: list[Dependency], max_keys: int) -> str:
    """The comment stored on each trigger: what it was installed for."""
    body = {
        "deps": sorted([d.cached, d.column] for d in deps),
        "max_keys": max_keys,
    }
    return "cachework " + json.dumps(body, sort_keys=True)  # ": ", never a bind ":name"


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _regclass(conn: sa.Connection, base: str) -> tuple[str, str]:
    """The table's qualified, quoted name and its quoted schema; NotFoundError naming it
    when it does not exist."""
    found = conn.execute(sa.text("SELECT to_regclass(:t)::text"), {"t": base}).scalar()
    if found is None:
        raise NotFoundError(f"table {base!r} (read by a cached table) does not exist")
    schema = conn.execute(
        sa.text(
            "SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.oid = to_regclass(:t)"
        ),
        {"t": base},
    ).scalar_one()
    relname = conn.execute(
        sa.text("SELECT relname FROM pg_class WHERE oid = to_regclass(:t)"), {"t": base}
    ).scalar_one()
    quote = conn.dialect.identifier_preparer.quote
    return f"{quote(schema)}.{quote(relname)}", quote(schema)


def _column_type(conn: sa.Connection, base: str, column: str) -> str:
    kind = conn.execute(
        sa.text(
            "SELECT format_type(atttypid, NULL) FROM pg_attribute "
            "WHERE attrelid = to_regclass(:t) AND attname = :c AND NOT attisdropped"
        ),
        {"t": base, "c": column},
    ).scalar()
    if kind is None:
        raise NotFoundError(f"column {column!r} of table {base!r} does not exist")
    return kind


def _outbox(conn: sa.Connection) -> str:
    found = conn.execute(sa.text("SELECT to_regclass('invalidation_outbox')::text")).scalar()
    if found is None:
        raise ConfigError("the invalidation_outbox table does not exist: run `cachework initdb`")
    schema = conn.execute(
        sa.text(
            "SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.oid = to_regclass('invalidation_outbox')"
        )
    ).scalar_one()
    return f"{conn.dialect.identifier_preparer.quote(schema)}.invalidation_outbox"


def _body(
    conn: sa.Connection, base: str, deps: list[Dependency], op: str, outbox: str, max_keys: int
) -> str:
    """The PL/pgSQL body of the trigger function for `op` on `base`."""
    quote = conn.dialect.identifier_preparer.quote
    whole = [_literal(json.dumps({"v": 1, "table": d.cached})) for d in deps]  # ": " as above
    if op == "truncate":
        values = ", ".join(f"({w})" for w in whole)
        return f"BEGIN\n  INSERT INTO {outbox} (data) VALUES {values};\n  RETURN NULL;\nEND;"
    sources = {"insert": ["new_rows"], "update": ["old_rows", "new_rows"], "delete": ["old_rows"]}
    sources = sources[op]
    lines = [
        "DECLARE",
        "  n bigint;",
        "  k jsonb;",
        "BEGIN",
        f"  SELECT count(*) INTO n FROM (SELECT 1 FROM {sources[0]} LIMIT {max_keys + 1}) s;",
        "  IF n = 0 THEN RETURN NULL; END IF;",
    ]
    for dep, whole_row in zip(deps, whole, strict=True):
        if dep.column is None:
            lines.append(f"  INSERT INTO {outbox} (data) VALUES ({whole_row});")
            continue
        column = quote(dep.column)
        if _column_type(conn, base, dep.column) in INTEGER_TYPES:
            key = f"to_jsonb({column})"
        else:
            key = f"to_jsonb({column}::text)"
        union = " UNION ".join(f"SELECT DISTINCT {column} FROM {s}" for s in sources)
        lines += [
            f"  IF n > {max_keys} THEN",
            f"    INSERT INTO {outbox} (data) VALUES ({whole_row});",
            "  ELSE",
            f"    SELECT jsonb_agg({key}) INTO k FROM ({union}) u WHERE {column} IS NOT NULL;",
            "    IF k IS NOT NULL THEN",
            f"      INSERT INTO {outbox} (data) VALUES (CASE WHEN jsonb_array_length(k) > "
            f"{max_keys} THEN {whole_row} ELSE jsonb_build_object('v', 1, 'table', "
            f"{_literal(dep.cached)}, 'keys', k)::text END);",
            "    END IF;",
            "  END IF;",
        ]
    lines += ["  RETURN NULL;", "END;"]
    return "\n".join(lines)


def install(
    engine: sa.Engine, deps: Iterable[Dependency], max_keys: int = 10_000, always: bool = False
) -> list[str]:
    """Create or replace the triggers of every base table in `deps` (one transaction);
    returns the base tables. Triggers of base tables no longer in `deps` are removed.
    `always`: they fire in replica mode too (ENABLE ALWAYS), else only as ordinary ones."""
    _require_postgresql(engine)
    by_base = _by_base(deps)
    with engine.begin() as conn:
        outbox = _outbox(conn)
        _drop(conn, keep=set(by_base))
        for base, base_deps in by_base.items():
            table, schema = _regclass(conn, base)
            spec = _spec(base_deps, max_keys)
            for op, event in OPS.items():
                function = f"{schema}.{_function(base, op)}"
                body = _body(conn, base, base_deps, op, outbox, max_keys)
                conn.execute(
                    sa.text(
                        f"CREATE OR REPLACE FUNCTION {function}() RETURNS trigger "
                        "LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp "
                        f"AS $cachework$\n{body}\n$cachework$"
                    )
                )
                name = f"{PREFIX}_{op}"
                referencing = {
                    "insert": "REFERENCING NEW TABLE AS new_rows ",
                    "update": "REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows ",
                    "delete": "REFERENCING OLD TABLE AS old_rows ",
                    "truncate": "",
                }[op]
                conn.execute(sa.text(f"DROP TRIGGER IF EXISTS {name} ON {table}"))
                conn.execute(
                    sa.text(
                        f"CREATE TRIGGER {name} AFTER {event} ON {table} {referencing}"
                        f"FOR EACH STATEMENT EXECUTE FUNCTION {function}()"
                    )
                )
                conn.execute(sa.text(f"COMMENT ON TRIGGER {name} ON {table} IS {_literal(spec)}"))
                if always:
                    conn.execute(sa.text(f"ALTER TABLE {table} ENABLE ALWAYS TRIGGER {name}"))
    return list(by_base)


def _installed(conn: sa.Connection) -> list[tuple[str, str, str, str | None, str]]:
    """(qualified table, trigger name, function, comment, tgenabled) of every cachework
    trigger; tgenabled: O ordinary, A always, R replica only, D disabled."""
    rows = conn.execute(
        sa.text(
            "SELECT t.tgrelid::regclass::text, t.tgname, t.tgfoid::regprocedure::text, "
            "obj_description(t.oid, 'pg_trigger'), t.tgenabled::text FROM pg_trigger t "
            "WHERE NOT t.tgisinternal AND t.tgname LIKE :p ORDER BY 1, 2"
        ),
        {"p": f"{PREFIX}_%"},
    )
    return [tuple(row) for row in rows]


def _drop(conn: sa.Connection, keep: set[str] | None = None) -> list[str]:
    dropped: list[str] = []
    kept = {_base_of(conn, k) for k in keep or ()}
    for table, name, function, _comment, _enabled in _installed(conn):
        if _base_of(conn, table) in kept:
            continue
        conn.execute(sa.text(f'DROP TRIGGER IF EXISTS "{name}" ON {table}'))
        conn.execute(sa.text(f"DROP FUNCTION IF EXISTS {function}"))
        if table not in dropped:
            dropped.append(table)
    return dropped


def _base_of(conn: sa.Connection, name: str) -> int | None:
    return conn.execute(sa.text("SELECT to_regclass(:t)::oid"), {"t": name}).scalar()


def remove(engine: sa.Engine) -> list[str]:
    """Drop every cachework trigger and its function; returns the tables they were on."""
    _require_postgresql(engine)
    with engine.begin() as conn:
        return _drop(conn)


def status(
    engine: sa.Engine, deps: Iterable[Dependency], max_keys: int = 10_000
) -> list[TableTriggers]:
    """Per base table of `deps` (and any table still carrying a cachework trigger): which
    triggers exist and whether they match `deps` and `max_keys`."""
    _require_postgresql(engine)
    by_base = _by_base(deps)
    with engine.connect() as conn:
        installed = _installed(conn)
        oids = {base: _base_of(conn, base) for base in by_base}
        out = []
        seen: set[int | None] = set()
        for base, base_deps in by_base.items():
            mine = [r for r in installed if _base_of(conn, r[0]) == oids[base]]
            ops = tuple(r[1][len(PREFIX) + 1 :] for r in mine)
            spec = _spec(base_deps, max_keys)
            current = len(mine) == len(OPS) and all(r[3] == spec for r in mine)
            cached = tuple(d.cached for d in base_deps)
            out.append(TableTriggers(base, cached, ops, current, _fires(r[4] for r in mine)))
            seen.add(oids[base])
        stray: dict[str, list[tuple]] = {}
        for row in installed:
            if _base_of(conn, row[0]) not in seen:
                stray.setdefault(row[0], []).append(row)
        for table, rows in stray.items():
            ops = tuple(r[1][len(PREFIX) + 1 :] for r in rows)
            out.append(TableTriggers(table, (), ops, False, _fires(r[4] for r in rows)))
    return out


FIRES = {"O": "origin", "A": "always", "D": "disabled", "R": "replica"}


def _fires(enabled: Iterable[str]) -> str:
    """One table's triggers' mode: the mode they share, else "mixed" ("" for none)."""
    modes = {FIRES.get(e, e) for e in enabled}
    return modes.pop() if len(modes) == 1 else ("mixed" if modes else "")


def replication_role(engine: sa.Engine) -> str:
    """The `session_replication_role` a new session of `engine` starts with (the server's,
    database's or role's default): under `replica`, ordinary triggers do not fire."""
    _require_postgresql(engine)
    with engine.connect() as conn:  # reset_val: what RESET gives, whatever this one SET
        return conn.execute(
            sa.text("SELECT reset_val FROM pg_settings WHERE name = 'session_replication_role'")
        ).scalar_one()
