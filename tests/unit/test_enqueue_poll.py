"""`cachework import-versions --enqueue` polls the task: state and meta in one read.

Read apart (`.state`, then `.info`), a task that finished in between paired a PROGRESS
state with the final result, whose per-model counts carry no 'stage': KeyError: 'stage'
after a successful import (1 run of 15). A fake result backend whose meta moves on at
every read reproduces that interleaving exactly.
"""

from __future__ import annotations

import pytest
from celery import Celery
from celery.backends.base import BaseBackend
from click.testing import CliRunner

from cachework.importers.progress import RunProgress

RESULT = {
    "models": {"Product": {"created": 1, "updated": 0, "deleted": 0, "unchanged": 4}},
    "dry_run": False,
    "transaction_id": 7,
    "warnings": [],
}


def _snapshot() -> dict:
    run = RunProgress()
    run({"stage": "planned", "rows": {"Product": 5}})
    run({"model": "Product", "index": 1, "total": 1, "stage": "checking"})
    return run.snapshot()


class MovingBackend(BaseBackend):
    """Each read of the task's meta returns the next scripted one (the last repeats)."""

    def __init__(self, app: Celery, metas: list[dict]) -> None:
        super().__init__(app)
        self.metas = list(metas)
        self.reads = 0

    def _get_task_meta_for(self, task_id: str) -> dict:
        self.reads += 1
        meta = self.metas.pop(0) if len(self.metas) > 1 else self.metas[0]
        return {"task_id": task_id, **meta}


class FakeApp:
    def __init__(self, backend: MovingBackend, app: Celery) -> None:
        self.backend, self.app = backend, app

    def send_task(self, name: str, kwargs: dict | None = None):
        return self.app.AsyncResult("t-1", backend=self.backend)


@pytest.fixture
def moving_app(monkeypatch):
    from cachework import worker
    from cachework.worker.cli import versions

    celery_app = Celery("enqueue-poll", set_as_current=False)
    progress = {"status": "PROGRESS", "result": _snapshot()}
    success = {"status": "SUCCESS", "result": RESULT}
    # Old code: ready() reads PROGRESS, .state reads PROGRESS, .info reads the result.
    backend = MovingBackend(celery_app, [progress, progress, success])
    monkeypatch.setattr(worker, "app", FakeApp(backend, celery_app), raising=False)
    monkeypatch.setattr(versions, "POLL_EVERY", 0.0, raising=False)
    monkeypatch.setattr(versions.time, "sleep", lambda _s: None)
    try:
        yield backend
    finally:
        celery_app.close()


def test_a_task_that_finishes_between_two_reads_is_no_keyerror(moving_app):
    from cachework.worker.cli.versions import import_versions_command

    outcome = CliRunner().invoke(import_versions_command, ["--enqueue", "--timeout", "30"])
    assert outcome.exception is None or isinstance(outcome.exception, SystemExit), repr(
        outcome.exception
    )
    assert outcome.exit_code == 0, outcome.output
    assert "transaction 7" in outcome.output
    assert "Product" in outcome.output


def test_progress_read_back_from_a_result_has_a_stage_for_every_model():
    """A meta that is not a snapshot (a final result) still gives models with a stage."""
    run = RunProgress.from_snapshot(RESULT)
    assert run.models["Product"]["stage"] == "waiting"
    assert "Product waiting" in run.line()
    assert not run.finished
