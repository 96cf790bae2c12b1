"""Version import progress: rows checked of rows to check per model, percentage and ETA,
the same in-process (rich), through the task's PROGRESS meta (`--enqueue`), off a
terminal and in the worker's log (bounded rate)."""

from __future__ import annotations

import io
import subprocess
import sys
import time

import sqlalchemy as sa
from rich.console import Console

from cachework.importers.progress import ESTIMATE_FRACTION, ESTIMATE_SECONDS, RunProgress, Throttle
from cachework.importers.run import STEP_ROWS
from cachework.importers.versions import import_versions
from cachework.worker.cli.versions import ModelProgress
from demo.seed import seed
from tests.conftest import MODELS, make_env

PRODUCTS = 300
LARGE = STEP_ROWS + 1_000  # a model that reports after each of its statements
CACHEWORK = [sys.executable, "-c", "from cachework.worker.cli import main; main()"]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_rows_percent_and_eta():
    clock = Clock()
    run = RunProgress(clock)
    run({"stage": "planned", "rows": {"Category": 100, "Product": 300}})
    assert (run.rows, run.done, run.percent, run.eta) == (400, 0, 0.0, None)
    run({"model": "Category", "index": 1, "total": 2, "stage": "checking"})
    clock.now += 2
    run({"model": "Category", "index": 1, "total": 2, "stage": "done", "created": 4})
    assert (run.done, run.percent, run.eta) == (100, 25.0, 6.0)  # 2 s per 100 rows
    line = run.line()
    assert "1/2 models checked, 100/400 rows (25%), ETA 6s" in line
    assert "Category done 100/100, Product waiting 0/300" in line
    meta = run.snapshot()
    assert meta["models"]["Category"] == {"stage": "done", "done": 100, "rows": 100, "created": 4}
    back = RunProgress.from_snapshot(meta)
    assert (back.rows, back.done, back.percent, back.eta) == (400, 100, 25.0, 6.0)
    run({"model": "Product", "index": 2, "total": 2, "stage": "counted", "updated": 1})
    run({"model": "Product", "index": 2, "total": 2, "stage": "done", "updated": 1})
    assert run.finished and run.percent == 100.0 and run.eta == 0.0


def test_throttle_bounds_the_rate():
    clock = Clock()
    throttle = Throttle(5.0, clock)
    fired = []
    for _ in range(100):  # 10 s in steps of 0.1 s
        fired.append(throttle())
        clock.now += 0.1
    assert sum(fired) == 2 and fired[0]


def _bars(render) -> str:
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, width=140, color_system=None)
    with ModelProgress(console) as progress:
        render(progress)
    return buffer.getvalue().rsplit("\x1b[2K", 1)[-1]  # the last frame


def test_the_cli_bars_in_process_and_from_the_task_meta_are_the_same(database):
    with database.session() as session:
        seed(session, projects=1, products=50)
    events = []
    with database.session() as session:
        import_versions(session, MODELS.versioned, progress=events.append)
    assert events[0] == {"stage": "planned", "rows": {"Category": 8, "Product": 50}}

    def local(progress):
        for event in events:
            progress(event)

    run = RunProgress()
    metas = []
    for event in events:
        run(event)
        metas.append(run.snapshot())

    def enqueued(progress):
        for meta in metas[::2]:  # a poll misses states: every model is still there
            progress.show(meta)
        progress.show(metas[-1])

    for render in (local, enqueued):
        frame = _bars(render)
        assert "Category" in frame and "8/8 rows" in frame, frame
        assert "Product" in frame and "50/50 rows" in frame, frame
        assert "all models" in frame and "58/58 rows" in frame and "100%" in frame, frame
        assert "written c=50 u=0 d=0 same=0" in frame, frame  # was u= twice


def test_enqueue_off_a_terminal_and_the_worker_log_progress(
    tmp_path, pg_database, redis_url, worker_process
):
    """The import is held at its first version write (a lock the test holds), so the
    CLI's polls see it mid-run: Category checked, Product being checked."""
    with pg_database.session() as session:
        seed(session, projects=2, products=PRODUCTS)
    env = make_env(
        tmp_path, database_url=pg_database.url, broker_url=redis_url, result_backend=redis_url
    )
    node, _app = worker_process(env, concurrency=1)
    holder = pg_database.engine.connect()
    try:
        holder.execute(sa.text("LOCK TABLE products_version IN EXCLUSIVE MODE"))  # reads pass
        with open(tmp_path / "cli.err", "w+") as err:
            cli = subprocess.Popen(
                [*CACHEWORK, "import-versions", "--enqueue", "--timeout", "60"],
                env=env, stdout=subprocess.PIPE, stderr=err, text=True,
            )  # fmt: skip
            try:
                deadline = time.monotonic() + 60
                while not _waits_on_products_version(pg_database):
                    assert time.monotonic() < deadline and cli.poll() is None
                    time.sleep(0.05)
                time.sleep(0.6)  # a few of the CLI's polls (every 0.2 s)
                holder.rollback()
                out, _ = cli.communicate(timeout=60)
            finally:
                if cli.poll() is None:
                    cli.kill()
                    cli.wait(timeout=10)
            err.seek(0)
            stderr = err.read()
    finally:
        holder.close()
    assert cli.returncode == 0, stderr
    assert "transaction 1" in out
    lines = [line for line in stderr.splitlines() if line.startswith("version import:")]
    rows = f"{PRODUCTS + 8:,}"
    assert lines[0] == (
        f"version import: 1/2 models checked, 8/{rows} rows (3%), ETA "
        + lines[0].split("ETA ", 1)[1].split(";")[0]
        + f"; Category done 8/8, Product checking 0/{PRODUCTS:,}"
    ), lines
    assert lines[-1] == (
        f"version import: 2/2 models checked, {rows}/{rows} rows (100%); "
        f"Category done 8/8, Product done {PRODUCTS:,}/{PRODUCTS:,}"
    ), lines
    assert len(lines) == 2  # bounded rate: at most one line per 2 s
    node.stop()
    log = [line for line in node.logfile.read_text().splitlines() if "version import:" in line]
    assert len(log) == 2, log  # the first and the last (the run took under 5 s)
    assert log[-1].endswith(f"Category done 8/8, Product done {PRODUCTS:,}/{PRODUCTS:,}"), log


def _waits_on_products_version(database) -> bool:
    with database.engine.connect() as conn:
        return bool(
            conn.execute(
                sa.text(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND query ILIKE '%products_version%'"
                )
            ).scalar_one()
        )


def test_the_task_sends_task_progress_events_for_flower(pg_database, tmp_path, monkeypatch):
    """Run by a worker, the import also sends `task-progress` events (Flower shows the
    task in state PROGRESS, with the whole run so far)."""
    from cachework.worker import create_app
    from cachework.worker.runtime import Runtime
    from tests.conftest import settings_of

    settings = settings_of(make_env(tmp_path, database_url=pg_database.url, redis_url="off"))
    app = create_app(settings)
    app.runtime = Runtime(settings, database=pg_database)
    app.loader.import_default_modules()
    try:
        with pg_database.session() as session:
            seed(session, projects=1, products=7)
        task = app.tasks["cachework.import_versions"]
        sent = []
        monkeypatch.setattr(task, "update_state", lambda **kw: None)
        monkeypatch.setattr(task, "send_event", lambda type_, **f: sent.append((type_, f)))
        task.push_request(id="events-test", hostname="w1@host")
        try:
            task.run()
        finally:
            task.pop_request()
    finally:
        app.runtime.stop()
        app.close()
    assert {type_ for type_, _ in sent} == {"task-progress"}
    last = sent[-1][1]
    assert last["rows"] == last["done"] == 15 and last["percent"] == 100.0
    assert set(last["models"]) == {"Category", "Product"}
    for _type, fields in sent:  # what Flower's task page lists, in every event
        assert {"percent", "done", "total", "eta_seconds", "model"} <= set(fields)
    assert last["total"] == 15 and last["model"] == "Product" and last["eta_seconds"] == 0


def _stepped_import(database, clock: Clock, **kwargs) -> list[tuple[str | None, dict]]:
    """Import with a RunProgress on a clock that moves 1 s per event; returns each event's
    model and the snapshot after it."""
    run = RunProgress(clock)
    seen = []

    def progress(event: dict) -> None:
        clock.now += 1.0
        run(event)
        seen.append((event.get("model"), run.snapshot()))

    with database.session() as session:
        import_versions(session, MODELS.versioned, progress=progress, **kwargs)
    return seen


def test_a_large_model_reports_within_itself_with_an_honest_eta(pg_database):
    """A model of LARGE rows reports after each of its statements: its percentage moves
    (monotonic, several values strictly between 0 and 100 while it runs), no ETA until
    ESTIMATE_FRACTION of the rows and ESTIMATE_SECONDS have passed, then the rate's."""
    with pg_database.session() as session:
        seed(session, projects=2, products=LARGE)
    total = LARGE + 8
    # the first run writes (probes, then writes), a dry run counts, a run in sync probes
    for kwargs in ({}, {"dry_run": True}, {}):
        seen = _stepped_import(pg_database, Clock(), **kwargs)
        percents = [meta["percent"] for _model, meta in seen]
        assert percents == sorted(percents) and percents[-1] == 100.0, percents
        inside = {meta["percent"] for model, meta in seen if model == "Product"} - {0.0, 100.0}
        assert len(inside) >= 1 and all(0 < p < 100 for p in inside), percents
        assert {meta["total"] for _m, meta in seen} == {total}
        for _model, meta in seen:
            done, elapsed = meta["done"], meta["elapsed"]
            if done < ESTIMATE_FRACTION * total or elapsed < ESTIMATE_SECONDS:
                assert meta["eta_seconds"] is None, meta
            elif done < total:  # the rate so far: never hours for a run of seconds
                assert meta["eta_seconds"] == round(elapsed * (total - done) / done), meta
                assert meta["eta_seconds"] <= 5 * len(seen), meta
        estimated = [meta["eta_seconds"] for _m, meta in seen if meta["done"] < total]
        assert estimated[0] is None and any(e is not None for e in estimated), estimated
        if not kwargs:
            assert len(inside) >= (3 if seen[-1][1]["created"] else 1), percents


def test_the_cli_bar_of_one_large_model_moves_and_says_estimating():
    """One model, no "all models" row: its own row moves with its statements and says
    that the ETA is still being estimated (a zero-time step gives no rate)."""
    head = {"model": "Product", "index": 1, "total": 1}

    def render(progress):
        progress({"stage": "planned", "rows": {"Product": 10_000}})
        progress({**head, "stage": "checking"})
        progress({**head, "stage": "checking", "part": 2, "parts": 5})

    frame = _bars(render)
    assert "4,000/10,000 rows" in frame and "40%" in frame, frame
    assert "checking, ETA estimating" in frame and "all models" not in frame, frame
