"""`cachework seed`: the example app filled for a trial, on SQLite or PostgreSQL."""

from __future__ import annotations

import sqlalchemy as sa
from click.testing import CliRunner

from cachework.worker.cli import main


def _cli(monkeypatch, tmp_path, url: str, *args: str, **env: str):
    monkeypatch.setenv("CACHEWORK_DATABASE_URL", url)
    monkeypatch.setenv("CACHEWORK_DATA_DIR", str(tmp_path / "cachework"))
    monkeypatch.setenv("CACHEWORK_REDIS_URL", "off")
    for name, value in env.items():
        monkeypatch.setenv(f"CACHEWORK_{name.upper()}", value)
    return CliRunner().invoke(main, list(args))


def _count(url: str, table: str) -> int:
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            return conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one()
    finally:
        engine.dispose()


def test_seed_fills_the_example_app(any_db_url, tmp_path, monkeypatch):
    early = _cli(monkeypatch, tmp_path, any_db_url, "seed")
    assert early.exit_code == 2 and "run `cachework initdb`" in early.output
    assert _cli(monkeypatch, tmp_path, any_db_url, "initdb").exit_code == 0
    done = _cli(monkeypatch, tmp_path, any_db_url, "seed", "--projects", "2", "--products", "40")
    assert done.exit_code == 0, done.output
    assert "2 projects, 8 categories, 40 products" in done.output
    again = _cli(monkeypatch, tmp_path, any_db_url, "seed")
    assert again.exit_code == 2 and "already has 40 products: add more with --append" in (
        again.output
    )
    more = _cli(monkeypatch, tmp_path, any_db_url, "seed", "--append", "--products", "10")
    assert more.exit_code == 0 and "10 products" in more.output
    assert (_count(any_db_url, "products"), _count(any_db_url, "projects")) == (50, 2)
    imported = _cli(monkeypatch, tmp_path, any_db_url, "import-versions")
    assert imported.exit_code == 0 and "transaction 1" in imported.output
    assert _count(any_db_url, "products_version") == 50


def test_seed_needs_the_example_app(sqlite_url, tmp_path, monkeypatch):
    assert _cli(monkeypatch, tmp_path, sqlite_url, "initdb").exit_code == 0
    result = _cli(monkeypatch, tmp_path, sqlite_url, "seed", models="tests.versions_models")
    assert result.exit_code == 2
    assert "cachework seed fills the example app (demo.models)" in result.output
