"""Benchmark: the set-based version import against two baselines measured in the same run.

    .venv/bin/python bench/versions.py                 # 10k, 100k, 500k; SQLite and PostgreSQL
    .venv/bin/python bench/versions.py --sizes 10000,100000 --db postgresql

For each database and size, each approach runs in a FRESH subprocess on its own database,
seeded beforehand by ANOTHER subprocess (products written with plain SQL, so no versions
exist), so peak memory (ru_maxrss) belongs to that approach and size alone, never to the
seeding. Four scenarios run in order: a) no versions yet, b) in sync, c) 10% of rows
changed, d) 1% of rows deleted. The row-by-row baseline is skipped above `--orm-max`
(default 100k, where its target ratio is set): at 500k it needs gigabytes.

Approaches: `import` = importers.versions.import_versions (model Product);
`orm` = a row-by-row ORM import in the reference's style (load live rows and open versions
as objects, compare in Python, add version objects); `sql` = hand-written set-based SQL for
the same result (the floor). After the run each approach's version table is digested (with
transaction ids replaced by their rank), and the digests must agree.
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
APPROACHES = ("import", "orm", "sql")
COLUMNS = ("sku", "name", "price", "category_id", "project_uuid", "active")


# --- the approaches (run inside the child) -------------------------------------------------


def run_import(session, models) -> None:
    from importers.versions import import_versions

    import_versions(session, models.versioned, names=["Product"], comment="bench")


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


def digest(session) -> str:
    """The version table with transaction ids replaced by their rank (comparable)."""
    import sqlalchemy as sa

    txs = session.scalars(sa.text("SELECT DISTINCT transaction_id FROM products_version"))
    ranks = {tx: i for i, tx in enumerate(sorted(txs))}
    rows = session.execute(
        sa.text(
            f"SELECT id, {', '.join(COLUMNS)}, transaction_id, end_transaction_id, "
            "operation_type FROM products_version ORDER BY id, transaction_id"
        ).execution_options(yield_per=2000)
    )
    h = hashlib.sha256()
    for r in rows:
        # SQLite hands back NUMERIC as float here (text SQL, no type): compare at 1e-6.
        data = [f"{v:.6f}" if isinstance(v, float | Decimal) else v for v in r[:-3]]
        values = [*data, ranks[r[-3]], None if r[-2] is None else ranks.get(r[-2], -1), r[-1]]
        h.update(repr([str(v) for v in values]).encode())
    return h.hexdigest()[:16]


def seed_database(db: str, size: int) -> dict:
    """Create and seed a fresh database (in its own process); returns its URL."""
    import sqlalchemy as sa

    from cache.database import Database
    from worker.bootstrap import bootstrap
    from worker.schema import create_tables

    models = bootstrap(("demo.models",))  # before anything imports the models
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


def child(url: str, approach: str) -> dict:
    """Run the four scenarios on a seeded database; report times, digest and maxrss."""
    import sqlalchemy as sa

    from cache.database import Database
    from worker.bootstrap import bootstrap

    models = bootstrap(("demo.models",))
    database = Database(url)
    fn = {"import": run_import, "orm": run_orm, "sql": run_sql}[approach]
    times: dict[str, float] = {}
    try:
        with database.session() as session:  # connect (and load the driver) first
            session.execute(sa.text("SELECT 1"))
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        for scenario in SCENARIOS:
            if scenario in MUTATIONS:
                with database.session() as session:
                    session.execute(sa.text(MUTATIONS[scenario]))
            started = time.perf_counter()
            with database.session() as session:
                fn(session, models)
            times[scenario] = time.perf_counter() - started
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # before the digest
        with database.session() as session:
            result_digest = digest(session)
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


def measure(db: str, size: int, approach: str) -> dict:
    """Seed a fresh database in one process, run `approach` on it in another, drop it."""
    url = _subprocess("--seed", db, str(size))["url"]
    try:
        return _subprocess("--child", url, approach)
    finally:
        drop_database(url)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes", default="10000,100000,500000", help="Comma-separated row counts."
    )
    parser.add_argument("--db", default="sqlite,postgresql", help="sqlite, postgresql or both.")
    parser.add_argument("--approaches", default=",".join(APPROACHES))
    parser.add_argument(
        "--orm-max", type=int, default=100_000, help="Largest size for the row-by-row baseline."
    )
    parser.add_argument("--seed", nargs=2, metavar=("DB", "SIZE"), help=argparse.SUPPRESS)
    parser.add_argument("--child", nargs=2, metavar=("URL", "APP"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.seed:
        print(json.dumps(seed_database(args.seed[0], int(args.seed[1]))))
        return
    if args.child:
        print(json.dumps(child(*args.child)))
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    memory: dict[tuple[str, str], list[tuple[int, float]]] = {}
    for db in args.db.split(","):
        for size in sizes:
            approaches = [
                a for a in args.approaches.split(",") if a != "orm" or size <= args.orm_max
            ]
            results = {a: measure(db, size, a) for a in approaches}
            digests = {a: r["digest"] for a, r in results.items()}
            same = "identical" if len(set(digests.values())) == 1 else f"DIFFER {digests}"
            print(f"\n== {db}, {size:,} products (version tables: {same})")
            header = "".join(f"{a + ' rows/s':>16}{'(s)':>8}" for a in approaches)
            ratios = ("   import vs orm" if "orm" in results else "") + (
                "   import vs sql" if "sql" in results else ""
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
