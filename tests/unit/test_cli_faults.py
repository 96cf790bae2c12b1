"""Regression tests of issue 12, defect 7: a command whose service is down, slow or
missing ends with one line naming the cause, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.invalidation_helpers import free_port


@pytest.fixture
def cli(tmp_path: Path, monkeypatch):
    """Run `cachework ARGS` in-process with CACHEWORK_* from `env`; returns the result."""
    from cachework import worker
    from cachework.worker import celery_app
    from cachework.worker.cli import main

    def run(args: list[str], **env: str):
        for name in [n for n in __import__("os").environ if n.startswith("CACHEWORK_")]:
            if not name.startswith("CACHEWORK_TEST_") and name != "CACHEWORK_REQUIRE_SERVICES":
                monkeypatch.delenv(name)
        monkeypatch.setenv("CACHEWORK_DATA_DIR", str(tmp_path / "data"))
        for name, value in env.items():
            monkeypatch.setenv(f"CACHEWORK_{name.upper()}", value)
        monkeypatch.delitem(worker.__dict__, "app", raising=False)
        monkeypatch.delitem(celery_app.__dict__, "app", raising=False)
        try:
            return CliRunner().invoke(main, args)
        finally:
            app = celery_app.__dict__.pop("app", None)
            if app is not None:
                app.runtime.close()
                app.close()

    return run


def _one_line(result, *words: str) -> str:
    text = result.output.strip()
    assert "Traceback" not in text, text
    assert result.exit_code in (1, 2), (result.exit_code, text)
    last = text.splitlines()[-1]
    assert last.startswith("error: "), text
    for word in words:
        assert word in last, text
    assert not isinstance(result.exception, Exception) or isinstance(
        result.exception, SystemExit
    ), result.exception
    return last


@pytest.mark.parametrize(
    "args",
    [
        ["sync-cache", "--enqueue", "--timeout", "0.5"],
        ["delete-cache", "--enqueue", "--timeout", "0.5"],
        ["invalidate", "categories", "1", "--enqueue", "--timeout", "0.5"],
    ],
)
def test_enqueue_with_no_worker_is_one_line(cli, args):
    assert cli(["initdb"]).exit_code == 0
    _one_line(cli(args), "no result from the workers")


@pytest.mark.parametrize(
    "args",
    [
        ["sync-cache", "--enqueue", "--timeout", "0.5"],
        ["delete-cache", "--enqueue", "--timeout", "0.5"],
        ["invalidate", "categories", "1", "--enqueue", "--timeout", "0.5"],
    ],
)
def test_enqueue_with_the_broker_down_is_one_line(cli, args):
    assert cli(["initdb"]).exit_code == 0
    down = f"redis://127.0.0.1:{free_port()}/0"
    _one_line(cli(args, broker_url=down, redis_url="off"), "CACHEWORK_BROKER_URL", "reached")


@pytest.mark.parametrize("args", [["sync-cache"], ["delete-cache"], ["invalidate", "categories"]])
def test_the_database_down_is_one_line(cli, args):
    down = f"postgresql://postgres@127.0.0.1:{free_port()}/nowhere"
    last = _one_line(cli(args, database_url=down, redis_url="off"))
    assert "Connection refused" in last
    assert "DATABASE" in last.upper() or "log table" in last, last


@pytest.mark.parametrize("args", [["sync-cache"], ["delete-cache"], ["initdb"]])
def test_an_unwritable_data_dir_is_one_line(cli, args):
    _one_line(cli(args, data_dir="/proc/cachework-nowhere"), "/proc/cachework-nowhere")
