"""The app owns its Continuum set-up: checks in a process each (`tests/continuum_checks.py`),
and an app in the style of Continuum's documentation through the CLI and a real worker."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.conftest import make_env
from tests.continuum_checks import CHECKS

ROOT = Path(__file__).resolve().parent.parent
CACHEWORK = [sys.executable, "-c", "from cachework.worker.cli import main; main()"]


@pytest.mark.parametrize("check", sorted(CHECKS))
def test_app_set_up(check, tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "tests.continuum_checks", check, str(tmp_path / "app.db")],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0 and f"ok {check}" in done.stdout, done.stderr[-4000:]


def _check_both_transactions(engine: sa.Engine) -> None:
    """The CLI's transaction 1 and the task's transaction 2, with their users, remote
    address, changes, meta and version rows, as Continuum itself would write them."""
    with engine.connect() as conn:
        query = 'SELECT id, remote_addr, user_id FROM "transaction" ORDER BY id'
        rows = conn.execute(sa.text(query)).all()
        assert rows == [(1, None, 5), (2, "192.0.2.1", 5)]
        changes = conn.execute(sa.text(
            "SELECT transaction_id, entity_name FROM transaction_changes "
            "ORDER BY 1, 2")).all()  # fmt: skip
        assert changes == [(1, "Article"), (1, "Car"), (1, "Tag"), (2, "Car")]
        meta = conn.execute(sa.text(
            "SELECT transaction_id, key, value FROM transaction_meta")).all()  # fmt: skip
        assert meta == [(1, "comment", "by the cli")]
        cars = conn.execute(sa.text(
            "SELECT doors, transaction_id, end_transaction_id, operation_type, doors_mod "
            "FROM cars_version ORDER BY transaction_id")).all()  # fmt: skip
        assert cars == [(3, 1, 2, 0, True), (5, 2, None, 1, True)]
        vehicles = conn.execute(sa.text(
            "SELECT transaction_id, end_transaction_id, operation_type, wheels_mod "
            "FROM vehicles_version ORDER BY transaction_id")).all()  # fmt: skip
        assert vehicles == [(1, 2, 0, True), (2, None, 1, False)]


def test_a_documentation_style_app_through_the_cli_and_a_real_worker(
    tmp_path, pg_url, redis_url, worker_process
):
    """`tests/continuum_apps/full.py` calls make_versioned itself (integer-keyed users,
    three plugins): `cachework initdb`, `import-versions` and the task work unchanged."""
    env = make_env(
        tmp_path,
        database_url=pg_url,
        broker_url=redis_url,
        models="tests.continuum_apps.full",
        cached_tables="off",
    )

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*CACHEWORK, *args], env=env, cwd=ROOT, capture_output=True,
                              text=True, timeout=120)  # fmt: skip

    made = cli("initdb")
    assert made.returncode == 0, made.stderr
    engine = sa.create_engine(pg_url, poolclass=sa.pool.NullPool)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("INSERT INTO users (id, name) VALUES (5, 'ann')"))
            conn.execute(sa.text("INSERT INTO tags (id, name) VALUES (1, 'a'), (2, 'b')"))
            conn.execute(sa.text("INSERT INTO articles (id, display_title) VALUES (1, 'x')"))
            conn.execute(sa.text("INSERT INTO article_tag VALUES (1, 1), (1, 2)"))
            conn.execute(sa.text("INSERT INTO vehicles VALUES (1, 'car', 4, NULL)"))
            conn.execute(sa.text("INSERT INTO cars VALUES (1, 3)"))
        done = cli("import-versions", "--user", "5", "--comment", "by the cli")
        assert done.returncode == 0, done.stderr
        assert "transaction 1" in done.stdout
        _node, app = worker_process(env, concurrency=1)
        with engine.begin() as conn:
            conn.execute(sa.text("UPDATE cars SET doors = 5"))
            conn.execute(sa.text("DELETE FROM article_tag WHERE tag_id = 2"))
        result = app.send_task(
            "cachework.import_versions", kwargs={"user": "5", "remote_addr": "192.0.2.1"}
        ).get(timeout=90)
        assert result["transaction_id"] == 2 and result["warnings"] == []
        assert result["models"]["Car"]["updated"] == 1
        assert result["models"]["article_tag"]["deleted"] == 1
        _check_both_transactions(engine)
    finally:
        engine.dispose()
