"""Worker logs: CACHEWORK_LOG_FORMAT=json gives one JSON object per line with the task's
name and id; bad input is one WARNING line without a traceback, an unexpected error keeps
its traceback. Ctrl-C in `cachework import-versions` says nothing was written, exit 130."""

from __future__ import annotations

import json
import logging

import pytest
from click.testing import CliRunner

from cachework.errors import ConfigError
from cachework.settings import load_settings
from cachework.worker.cli import main
from cachework.worker.logsetup import JsonFormatter
from demo.seed import seed
from tests.conftest import make_env
from tests.import_helpers import transactions


def _records(path) -> list[dict]:
    lines = path.read_text(errors="replace").splitlines()
    return [json.loads(line) for line in lines if line.startswith("{")]


def test_json_logs_expected_errors_warn_in_one_line_unexpected_keep_the_traceback(
    tmp_path, sqlite_url, redis_url, worker_process
):
    env = make_env(tmp_path, database_url=sqlite_url, broker_url=redis_url, log_format="json")
    node, app = worker_process(env, concurrency=1)
    bad = app.send_task("cachework.lookup", kwargs={"table": "nope", "key": 1})
    bad.get(timeout=30, propagate=False)
    broken = app.send_task("cachework.delete_cache")  # no tables yet: an OperationalError
    broken.get(timeout=30, propagate=False)
    assert bad.status == broken.status == "FAILURE"
    node.stop()

    records = _records(node.logfile)
    text = node.logfile.read_text(errors="replace")
    assert records, text[-2000:]
    expected = [r for r in records if r.get("task_id") == bad.id and r["level"] != "INFO"]
    assert len(expected) == 1, expected
    (line,) = expected
    assert line["level"] == "WARNING" and line["task_name"] == "cachework.lookup"
    assert "raised expected" in line["message"] and "nope" in line["message"]
    assert "exc_info" not in line and "\n" not in line["message"]
    unexpected = [r for r in records if r.get("task_id") == broken.id and r["level"] == "ERROR"]
    assert len(unexpected) == 1, records
    assert unexpected[0]["task_name"] == "cachework.delete_cache"
    assert "raised unexpected" in unexpected[0]["message"]
    assert "Traceback" in unexpected[0]["exc_info"]
    received = [r for r in records if r.get("task_id") == bad.id and "received" in r["message"]]
    assert received, "the worker's own lines carry the task's id too"
    assert "Traceback" not in text.split(bad.id, 1)[1].split(broken.id, 1)[0]


def test_json_logs_start_and_stop_a_worker_in_json_lines_only(
    tmp_path, sqlite_url, redis_url, worker_process
):
    """With JSON logs, Celery's start-up banner (and its shutdown line) are JSON records
    too: every line the worker writes to stdout or stderr parses (issue 22, item 9)."""
    env = make_env(tmp_path, database_url=sqlite_url, broker_url=redis_url, log_format="json")
    node, _app = worker_process(env, concurrency=1)
    node.stop()
    lines = node.logfile.read_text(errors="replace").splitlines()
    assert lines
    for line in lines:
        json.loads(line)  # a plain-text line fails here, naming it
    records = [json.loads(line) for line in lines]
    (banner,) = [r for r in records if r.get("node") == node.name and "transport" in r]
    assert banner["level"] == "INFO" and "starting" in banner["message"]
    assert "127.0.0.1" in banner["transport"] and "cache" in banner["queues"]
    assert any("shutdown" in r["message"] for r in records), records


def test_json_formatter_outside_a_task():
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "hello %s", ("you",), None)
    data = json.loads(JsonFormatter().format(record))
    assert data["message"] == "hello you" and data["level"] == "INFO"
    assert "task_id" not in data


def test_log_format_setting():
    assert load_settings({}).log_format == "text"
    assert load_settings({"CACHEWORK_LOG_FORMAT": "JSON"}).log_format == "json"
    with pytest.raises(ConfigError, match="CACHEWORK_LOG_FORMAT='xml'"):
        load_settings({"CACHEWORK_LOG_FORMAT": "xml"})


def test_ctrl_c_mid_import_rolls_back_and_exits_130(database, runtime, monkeypatch):
    import cachework.importers.versions as importer

    with database.session() as session:
        seed(session, projects=1, products=30)
    real = importer.import_versions

    def interrupted(session, classes, progress=None, **kwargs):
        def hook(event):
            if progress is not None:
                progress(event)
            if event.get("stage") == "done":  # the first model's versions are written
                raise KeyboardInterrupt

        return real(session, classes, progress=hook, **kwargs)

    monkeypatch.setattr(importer, "import_versions", interrupted)
    result = CliRunner().invoke(main, ["import-versions"])
    assert result.exit_code == 130, result.output
    assert "the run was rolled back; nothing was written" in result.output
    assert "Aborted" not in result.output
    with database.session() as session:
        assert transactions(session) == 0
        assert session.execute(sa_count("products_version")).scalar_one() == 0
        assert session.execute(sa_count("categories_version")).scalar_one() == 0


def sa_count(table: str):
    import sqlalchemy as sa

    return sa.select(sa.func.count()).select_from(sa.table(table))
