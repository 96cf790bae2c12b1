"""Benchmark: the set-based version import against two baselines measured in the same run.

    .venv/bin/python bench/versions.py                 # both suites, their default sizes
    .venv/bin/python bench/versions.py --suite products --sizes 10000,100000 --db postgresql
    .venv/bin/python bench/versions.py --suite shapes   # joined inheritance + association

Suite `products` (the demo's flat `Product`; 10k, 100k, 500k on SQLite and PostgreSQL) and
suite `shapes` (`tests/continuum_apps/bench_shapes.py`: a joined-table inheritance pair
`Entry` <- `Post` whose posts have tags through the versioned association table
`bench_post_tag`, one tag row per post, and the flat `Tag`; 10k and 100k posts on
PostgreSQL, where the targets are set).

For each database and size, each approach runs in a FRESH subprocess on its own database,
seeded beforehand by ANOTHER subprocess (products written with plain SQL, so no versions
exist), so peak memory (ru_maxrss) belongs to that approach and size alone, never to the
seeding. Four scenarios run in order: a) no versions yet, b) in sync, c) 10% of rows
changed, d) 1% of rows deleted. The row-by-row baseline is skipped above `--orm-max`
(default 100k, where its target ratio is set): at 500k it needs gigabytes.

Approaches: `import` = cachework.importers.versions.import_versions (model Product; every model of
the shapes suite); `progress` = the same with a progress listener doing what the task does
for each event (RunProgress, its snapshot as JSON; a large model then reports after each
of its statements), against `import` in the column "progress vs import";
`orm` = a row-by-row ORM import in the reference's style (load live rows and open versions
as objects, compare in Python, add version objects; products only); `sql` = hand-written
set-based SQL for the same result (the floor). After the run each approach's version
tables are digested (with transaction ids replaced by their rank), and the digests must
agree.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import subprocess
import sys
import time
import uuid
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PG_ADMIN = os.environ.get("CACHEWORK_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
SCENARIOS = ("a) no versions", "b) in sync", "c) 10% changed", "d) 1% deleted")
MUTATIONS = {
    "c) 10% changed": "UPDATE products SET price = price + 1 WHERE id % 10 = 0",
    "d) 1% deleted": "DELETE FROM products WHERE id % 100 = 1",
}
APPROACHES = ("import", "progress", "orm", "sql")
COLUMNS = ("sku", "name", "price", "category_id", "project_uuid", "active")
SHAPES_MODULE = "tests.continuum_apps.bench_shapes"
SHAPES_MUTATIONS = {
    "c) 10% changed": [  # a tenth of the posts changed, another tenth moved to another tag
        "UPDATE bench_posts SET views = views + 1 WHERE id % 10 = 0",
        "DELETE FROM bench_post_tag WHERE post_id % 10 = 5",
        "INSERT INTO bench_post_tag (post_id, tag_id) "
        "SELECT id, (id + 7) % 100 + 1 FROM bench_posts WHERE id % 10 = 5",
    ],
    "d) 1% deleted": [
        "DELETE FROM bench_post_tag WHERE post_id % 100 = 1",
        "DELETE FROM bench_posts WHERE id % 100 = 1",
        "DELETE FROM bench_entries WHERE id % 100 = 1",
    ],
}
SHAPES_DIGEST = {
    "bench_tags_version": ("id", "name"),
    "bench_entries_version": ("id", "kind", "title", "score"),
    "bench_posts_version": ("id", "body", "views"),
    "bench_post_tag_version": ("post_id", "tag_id"),
}


# --- the approaches (run inside the child) -------------------------------------------------


def run_import(session, models) -> None:
    from cachework.importers.versions import import_versions

    import_versions(session, models.versioned, names=["Product"], comment="bench")


def run_import_shapes(session, models) -> None:
    from cachework.importers.versions import import_versions

    import_versions(session, models.versioned, comment="bench")


def _listener():
    """What the task does with each progress event (tasks/versions.py): the whole run so
    far, serialized as its PROGRESS meta would be."""
    from cachework.importers.progress import RunProgress

    run = RunProgress()

    def progress(event: dict) -> None:
        run(event)
        json.dumps(run.snapshot())

    return progress


def run_progress(session, models) -> None:
    from cachework.importers.versions import import_versions

    import_versions(
        session, models.versioned, names=["Product"], comment="bench", progress=_listener()
    )


def run_progress_shapes(session, models) -> None:
    from cachework.importers.versions import import_versions

    import_versions(session, models.versioned, comment="bench", progress=_listener())


def run_sql_shapes(session, models) -> None:
    """The floor for the shapes suite: hand-written statements in one Continuum
    transaction (it knows every entry is a post; the import does not)."""
    import sqlalchemy as sa
    from sqlalchemy_continuum import versioning_manager

    txn = versioning_manager.unit_of_work(session).create_transaction(session)
    txn.meta = {"comment": "bench"}
    distinct = "IS DISTINCT FROM" if session.bind.dialect.name == "postgresql" else "IS NOT"
    statements = (
        *_tag_statements(distinct),
        *_entry_post_statements(distinct),
        *_closing_statements(),
        *_post_tag_statements(),
    )
    for sql in statements:
        session.execute(sa.text(sql), {"tx": txn.id})
    session.flush()


OPEN = "end_transaction_id IS NULL"


def _tag_statements(distinct: str) -> list[str]:
    """Tag: flat. New or changed rows' versions, then the deleted rows' ones."""
    return [
        "INSERT INTO bench_tags_version (id, name, transaction_id, operation_type) "
        "SELECT t.id, t.name, :tx, CASE WHEN v.id IS NULL THEN 0 ELSE 1 END "
        f"FROM bench_tags t LEFT JOIN bench_tags_version v ON v.id = t.id AND v.{OPEN} "
        f"AND v.operation_type <> 2 WHERE v.id IS NULL OR t.name {distinct} v.name",
        "INSERT INTO bench_tags_version (id, name, transaction_id, operation_type) "
        f"SELECT v.id, v.name, :tx, 2 FROM bench_tags_version v WHERE v.{OPEN} "
        "AND v.operation_type <> 2 AND v.transaction_id <> :tx "
        "AND NOT EXISTS (SELECT 1 FROM bench_tags t WHERE t.id = v.id)",
    ]


def _entry_post_statements(distinct: str) -> list[str]:
    """Entry <- Post: the base table's version first, the post's from the rows just
    written; then the deleted entries' and posts' versions."""
    changed = " OR ".join(
        [f"e.{c} {distinct} v.{c}" for c in ("kind", "title", "score")]
        + [f"p.{c} {distinct} pv.{c}" for c in ("body", "views")]
    )
    return [
        "INSERT INTO bench_entries_version (id, kind, title, score, transaction_id, "
        "operation_type) SELECT e.id, e.kind, e.title, e.score, :tx, "
        "CASE WHEN v.id IS NULL THEN 0 ELSE 1 END FROM bench_entries e "
        "JOIN bench_posts p ON p.id = e.id "
        f"LEFT JOIN bench_entries_version v ON v.id = e.id AND v.{OPEN} "
        "AND v.operation_type <> 2 "
        "LEFT JOIN bench_posts_version pv ON pv.id = v.id "
        "AND pv.transaction_id = v.transaction_id "
        f"WHERE v.id IS NULL OR {changed}",
        "INSERT INTO bench_posts_version (id, body, views, transaction_id, operation_type) "
        "SELECT p.id, p.body, p.views, :tx, n.operation_type FROM bench_entries_version n "
        "JOIN bench_posts p ON p.id = n.id WHERE n.transaction_id = :tx",
        "INSERT INTO bench_entries_version (id, kind, title, score, transaction_id, "
        f"operation_type) SELECT v.id, v.kind, v.title, v.score, :tx, 2 "
        f"FROM bench_entries_version v WHERE v.{OPEN} AND v.operation_type <> 2 "
        "AND v.transaction_id <> :tx "
        "AND NOT EXISTS (SELECT 1 FROM bench_entries e WHERE e.id = v.id)",
        "INSERT INTO bench_posts_version (id, body, views, transaction_id, operation_type) "
        f"SELECT v.id, v.body, v.views, :tx, 2 FROM bench_posts_version v WHERE v.{OPEN} "
        "AND v.operation_type <> 2 AND v.transaction_id <> :tx "
        "AND NOT EXISTS (SELECT 1 FROM bench_entries e WHERE e.id = v.id)",
    ]


def _closing_statements() -> list[str]:
    """Close the open versions of Tag, Entry and Post that this transaction replaced."""
    return [
        f"UPDATE {table} SET end_transaction_id = :tx WHERE {OPEN} "
        f"AND transaction_id <> :tx AND EXISTS (SELECT 1 FROM {table} n "
        f"WHERE n.transaction_id = :tx AND n.id = {table}.id)"
        for table in ("bench_tags_version", "bench_entries_version", "bench_posts_version")
    ]


def _post_tag_statements() -> list[str]:
    """The association: the newest version of a row is its current one; none is closed."""
    newest = (
        "NOT EXISTS (SELECT 1 FROM bench_post_tag_version w WHERE w.post_id = v.post_id "
        "AND w.tag_id = v.tag_id AND w.transaction_id > v.transaction_id)"
    )
    return [
        "INSERT INTO bench_post_tag_version (post_id, tag_id, transaction_id, operation_type) "
        "SELECT a.post_id, a.tag_id, :tx, 0 FROM bench_post_tag a WHERE NOT EXISTS "
        "(SELECT 1 FROM bench_post_tag_version v WHERE v.post_id = a.post_id "
        f"AND v.tag_id = a.tag_id AND v.operation_type <> 2 AND {newest})",
        "INSERT INTO bench_post_tag_version (post_id, tag_id, transaction_id, operation_type) "
        "SELECT v.post_id, v.tag_id, :tx, 2 FROM bench_post_tag_version v "
        f"WHERE v.operation_type <> 2 AND v.transaction_id <> :tx AND {newest} "
        "AND NOT EXISTS (SELECT 1 FROM bench_post_tag a WHERE a.post_id = v.post_id "
        "AND a.tag_id = v.tag_id)",
    ]


def run_orm(session, models) -> None:
    """The reference's style: whole tables as objects, compared in Python, row by row."""
    import sqlalchemy as sa
    from sqlalchemy.orm import Session
    from sqlalchemy_continuum import version_class, versioning_manager

    from demo.models import Product

    ProductVersion = version_class(Product)
    txn = versioning_manager.unit_of_work(session).create_transaction(session)
    txn.meta = {"comment": "bench"}
    # Like the reference, live rows come through a separate source session (loading them
    # into the target session would make Continuum's before_flush scan them all: O(n^2)).
    with Session(session.get_bind()) as source:
        live = {p.id: p for p in source.scalars(sa.select(Product))}
    current = {
        v.id: v
        for v in session.scalars(
            sa.select(ProductVersion).where(
                ProductVersion.end_transaction_id.is_(None), ProductVersion.operation_type != 2
            )
        )
    }
    for key, obj in live.items():
        data = {c: getattr(obj, c) for c in COLUMNS}
        version = current.get(key)
        if version is None:
            session.add(ProductVersion(id=key, transaction_id=txn.id, operation_type=0, **data))
        elif any(getattr(version, c) != value for c, value in data.items()):
            version.end_transaction_id = txn.id
            session.add(ProductVersion(id=key, transaction_id=txn.id, operation_type=1, **data))
    for key, version in current.items():
        if key not in live:
            version.end_transaction_id = txn.id
            data = {c: getattr(version, c) for c in COLUMNS}
            session.add(ProductVersion(id=key, transaction_id=txn.id, operation_type=2, **data))
    session.flush()


def run_sql(session, models) -> None:
    """The floor: three hand-written statements in one Continuum transaction."""
    import sqlalchemy as sa
    from sqlalchemy_continuum import versioning_manager

    txn = versioning_manager.unit_of_work(session).create_transaction(session)
    txn.meta = {"comment": "bench"}
    distinct = "IS DISTINCT FROM" if session.bind.dialect.name == "postgresql" else "IS NOT"
    cols = ", ".join(COLUMNS)
    changed = " OR ".join(f"p.{c} {distinct} v.{c}" for c in COLUMNS)
    tx = {"tx": txn.id}
    session.execute(
        sa.text(
            f"INSERT INTO products_version (id, {cols}, transaction_id, operation_type) "
            f"SELECT p.id, {', '.join('p.' + c for c in COLUMNS)}, :tx, "
            "CASE WHEN v.id IS NULL THEN 0 ELSE 1 END "
            "FROM products p LEFT JOIN products_version v ON v.id = p.id "
            "AND v.end_transaction_id IS NULL AND v.operation_type <> 2 "
            f"WHERE v.id IS NULL OR {changed}"
        ),
        tx,
    )
    session.execute(
        sa.text(
            f"INSERT INTO products_version (id, {cols}, transaction_id, operation_type) "
            f"SELECT v.id, {', '.join('v.' + c for c in COLUMNS)}, :tx, 2 "
            "FROM products_version v WHERE v.end_transaction_id IS NULL "
            "AND v.operation_type <> 2 AND v.transaction_id <> :tx "
            "AND NOT EXISTS (SELECT 1 FROM products p WHERE p.id = v.id)"
        ),
        tx,
    )
    session.execute(
        sa.text(
            "UPDATE products_version SET end_transaction_id = :tx "
            "WHERE end_transaction_id IS NULL AND transaction_id <> :tx AND EXISTS "
            "(SELECT 1 FROM products_version n WHERE n.transaction_id = :tx "
            "AND n.id = products_version.id)"
        ),
        tx,
    )
    session.flush()


def digest(session, tables: dict[str, tuple[str, ...]] | None = None) -> str:
    """The version tables with transaction ids replaced by their rank (comparable)."""
    import sqlalchemy as sa

    tables = tables or {"products_version": ("id", *COLUMNS)}
    txs = set()  # the transactions that wrote versions (the floor also makes empty ones)
    for table in tables:
        txs |= set(session.scalars(sa.text(f"SELECT DISTINCT transaction_id FROM {table}")))
    ranks = {tx: i for i, tx in enumerate(sorted(txs))}
    h = hashlib.sha256()
    for table, columns in tables.items():
        keys = columns[:2] if table == "bench_post_tag_version" else columns[:1]
        rows = session.execute(
            sa.text(
                f"SELECT {', '.join(columns)}, transaction_id, end_transaction_id, "
                f"operation_type FROM {table} ORDER BY {', '.join(keys)}, transaction_id"
            ).execution_options(yield_per=2000)
        )
        _digest_rows(h, rows, ranks)
    return h.hexdigest()[:16]


def _digest_rows(h, rows, ranks) -> None:
    for r in rows:
        # SQLite hands back NUMERIC as float here (text SQL, no type): compare at 1e-6.
        data = [f"{v:.6f}" if isinstance(v, float | Decimal) else v for v in r[:-3]]
        values = [*data, ranks[r[-3]], None if r[-2] is None else ranks.get(r[-2], -1), r[-1]]
        h.update(repr([str(v) for v in values]).encode())


def _series(db: str, size: int) -> str:
    """A FROM clause of the numbers 1..size as column g."""
    if db == "postgresql":
        return f"generate_series(1, {size}) AS t(g)"
    return (
        "(WITH RECURSIVE s(g) AS (SELECT 1 UNION ALL SELECT g + 1 FROM s "
        f"WHERE g < {size}) SELECT g FROM s) AS t"
    )


def seed_shapes(session, db: str, size: int) -> None:
    """`size` posts (entry + post rows), 100 tags, one tag per post: plain SQL."""
    import sqlalchemy as sa

    for sql in (
        f"INSERT INTO bench_tags (id, name) SELECT g, 'tag' FROM {_series(db, 100)}",
        "INSERT INTO bench_entries (id, kind, title, score) "
        f"SELECT g, 'post', 'title', (g % 1000) / 10.0 FROM {_series(db, size)}",
        f"INSERT INTO bench_posts (id, body, views) SELECT g, 'body', g % 50 "
        f"FROM {_series(db, size)}",
        f"INSERT INTO bench_post_tag (post_id, tag_id) SELECT g, g % 100 + 1 "
        f"FROM {_series(db, size)}",
    ):
        session.execute(sa.text(sql))


def seed_database(db: str, size: int, suite: str = "products") -> dict:
    """Create and seed a fresh database (in its own process); returns its URL."""
    import sqlalchemy as sa

    from cachework.database import Database
    from cachework.importers.bootstrap import bootstrap
    from cachework.worker.schema import create_tables

    # Before anything imports the models.
    models = bootstrap((SHAPES_MODULE,) if suite == "shapes" else ("demo.models",))
    if suite == "products":
        from demo.seed import seed

    name = f"cachework_bench_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    if db == "postgresql":
        with _admin().connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        base = PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
        url = f"{base}/{name}"
    else:
        folder = Path(os.environ.get("TMPDIR", "/tmp")) / name
        folder.mkdir(parents=True)
        url = f"sqlite:///{folder / 'bench.db'}"
    database = Database(url)
    try:
        create_tables(database.engine, models)
        with database.session() as session:
            if suite == "shapes":
                seed_shapes(session, db, size)
            else:
                seed(session, projects=10, products=size)
        if db == "postgresql":
            with database.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
                c.execute(sa.text("VACUUM ANALYZE"))
    finally:
        database.dispose()
    return {"url": url}


def drop_database(url: str) -> None:
    import sqlalchemy as sa

    if url.startswith("sqlite"):
        folder = Path(sa.engine.make_url(url).database).parent
        for file in folder.iterdir():
            file.unlink()
        folder.rmdir()
        return
    admin = _admin()
    try:
        with admin.connect() as conn:
            name = sa.engine.make_url(url).database
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


def _admin():
    import sqlalchemy as sa

    return sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")


def child(url: str, approach: str, suite: str = "products") -> dict:
    """Run the four scenarios on a seeded database; report times, digest and maxrss."""
    import sqlalchemy as sa

    from cachework.database import Database
    from cachework.importers.bootstrap import bootstrap

    shapes = suite == "shapes"
    models = bootstrap((SHAPES_MODULE,) if shapes else ("demo.models",))
    database = Database(url)
    if shapes:
        fn = {"import": run_import_shapes, "progress": run_progress_shapes, "sql": run_sql_shapes}[
            approach
        ]
    else:
        fn = {"import": run_import, "progress": run_progress, "orm": run_orm, "sql": run_sql}[
            approach
        ]
    mutations = SHAPES_MUTATIONS if shapes else {k: [v] for k, v in MUTATIONS.items()}
    times: dict[str, float] = {}
    try:
        with database.session() as session:  # connect (and load the driver) first
            session.execute(sa.text("SELECT 1"))
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        for scenario in SCENARIOS:
            if scenario in mutations:
                with database.session() as session:
                    for sql in mutations[scenario]:
                        session.execute(sa.text(sql))
            started = time.perf_counter()
            with database.session() as session:
                fn(session, models)
            times[scenario] = time.perf_counter() - started
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # before the digest
        with database.session() as session:
            result_digest = digest(session, SHAPES_DIGEST if shapes else None)
    finally:
        database.dispose()
    return {
        "times": times,
        "digest": result_digest,
        "maxrss_mib": peak / 1024,
        "start_rss_mib": rss_before / 1024,
    }


# --- the parent: one subprocess per (db, size, approach), then the tables ------------------


def _subprocess(*args: str) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, *args], capture_output=True, text=True, cwd=ROOT, check=False
    )
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(db: str, size: int, approach: str, suite: str = "products") -> dict:
    """Seed a fresh database in one process, run `approach` on it in another, drop it."""
    url = _subprocess("--seed", db, str(size), suite)["url"]
    try:
        return _subprocess("--child", url, approach, suite)
    finally:
        drop_database(url)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--suite", default="products,shapes", help="products, shapes or both (default)."
    )
    parser.add_argument(
        "--sizes",
        help="Comma-separated row counts (default: products 10k,100k,500k; shapes 10k,100k).",
    )
    parser.add_argument(
        "--db", help="sqlite, postgresql or both (default: products both; shapes postgresql)."
    )
    parser.add_argument("--approaches", default=",".join(APPROACHES))
    parser.add_argument(
        "--orm-max", type=int, default=100_000, help="Largest size for the row-by-row baseline."
    )
    parser.add_argument("--seed", nargs=3, metavar=("DB", "SIZE", "S"), help=argparse.SUPPRESS)
    parser.add_argument("--child", nargs=3, metavar=("URL", "APP", "S"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.seed:
        print(json.dumps(seed_database(args.seed[0], int(args.seed[1]), args.seed[2])))
        return
    if args.child:
        print(json.dumps(child(*args.child)))
        return
    for suite in args.suite.split(","):
        run_suite(suite, args)


def run_suite(suite: str, args: argparse.Namespace) -> None:
    shapes = suite == "shapes"
    default_sizes = "10000,100000" if shapes else "10000,100000,500000"
    sizes = [int(s) for s in (args.sizes or default_sizes).split(",")]
    databases = (args.db or ("postgresql" if shapes else "sqlite,postgresql")).split(",")
    names = "posts" if shapes else "products"
    print(f"\n######## suite {suite}")
    memory: dict[tuple[str, str], list[tuple[int, float]]] = {}
    for db in databases:
        for size in sizes:
            approaches = [
                a
                for a in args.approaches.split(",")
                if a != "orm" or (size <= args.orm_max and not shapes)
            ]
            results = {a: measure(db, size, a, suite) for a in approaches}
            digests = {a: r["digest"] for a, r in results.items()}
            same = "identical" if len(set(digests.values())) == 1 else f"DIFFER {digests}"
            print(f"\n== {db}, {size:,} {names} (version tables: {same})")
            header = "".join(f"{a + ' rows/s':>16}{'(s)':>8}" for a in approaches)
            ratios = (
                ("   import vs orm" if "orm" in results else "")
                + ("   import vs sql" if "sql" in results else "")
                + ("   progress vs import" if "progress" in results else "")
            )
            print(f"{'scenario':<16}{header}{ratios if 'import' in results else ''}")
            for scenario in SCENARIOS:
                line = f"{scenario:<16}"
                for a in approaches:
                    t = results[a]["times"][scenario]
                    line += f"{size / t:>16,.0f}{t:>8.3f}"
                ours = results["import"]["times"][scenario] if "import" in results else None
                if ours and "orm" in results:
                    line += f"{results['orm']['times'][scenario] / ours:>13.1f}x faster"
                if ours and "sql" in results:
                    line += f"{ours / results['sql']['times'][scenario]:>10.2f}x time"
                if ours and "progress" in results:
                    line += f"{results['progress']['times'][scenario] / ours:>15.2f}x time"
                print(line)
            for a in approaches:
                memory.setdefault((db, a), []).append((size, results[a]["maxrss_mib"]))
                print(f"  peak memory {a:<7} {results[a]['maxrss_mib']:7.1f} MiB "
                      f"(at start {results[a]['start_rss_mib']:.1f} MiB)")  # fmt: skip
    print("\n== peak memory growth, smallest to largest size")
    for (db, a), points in memory.items():
        (s0, m0), (s1, m1) = points[0], points[-1]
        print(
            f"  {db:<11}{a:<7} {s0:>9,} -> {s1:<9,} {m0:7.1f} -> {m1:7.1f} MiB ({m1 - m0:+.1f} MiB)"
        )


if __name__ == "__main__":
    main()
