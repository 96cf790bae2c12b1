"""`cachework demo`: the whole path on the embedded default, no server needed.

It builds a fresh SQLite database and `filesystem://` broker under `.cachework/demo`,
seeds the example app, starts a real prefork worker subprocess, runs each step of
`DEMO_STEPS` against it, and stops the worker. Each feature adds its own step module
(a `run(ctx)` function), so the demo grows without one long function.
"""

from __future__ import annotations

import importlib
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import click
from celery import Celery
from rich.console import Console
from sqlalchemy.orm import Session

from cachework import database as db
from cachework.importers.bootstrap import Models, bootstrap
from cachework.settings import Settings, load_settings
from cachework.worker.cli.params import NulFreePath
from cachework.worker.schema import create_tables
from cachework.worker.spawn import WorkerProcess

DEMO_STEPS = [
    "cachework.worker.demo_steps.basics:run",
    "cachework.worker.demo_steps.versions:run",
    "cachework.worker.demo_steps.project_cache:run",
    "cachework.worker.demo_steps.tables:run",
    "cachework.worker.demo_steps.invalidation:run",
    "cachework.worker.demo_steps.tracking:run",
    "cachework.worker.demo_steps.follow_data:run",
]


@dataclass
class DemoContext:
    """What every demo step gets: console, settings, database, app and a running worker."""

    console: Console
    settings: Settings
    env: dict[str, str]
    database: db.Database
    models: Models
    app: Celery
    worker: WorkerProcess

    def session(self) -> Session:
        return self.database.sessionmaker()

    def call(self, name: str, timeout: float = 60.0, **kwargs) -> object:
        """Send task `name` through the broker and wait for its JSON result."""
        started = time.perf_counter()
        result = self.app.send_task(name, kwargs=kwargs).get(timeout=timeout, interval=0.05)
        self.console.print(
            f"  [dim]{name}({_args(kwargs)}) took {time.perf_counter() - started:.2f}s[/dim]"
        )
        return result


def _args(kwargs: dict) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in kwargs.items())


DEMO_MARKER = ".cachework-demo"


def _is_demo_folder(folder: Path) -> bool:
    """An earlier demo's folder (its marker), or an empty one: safe to replace."""
    if not folder.is_dir():
        return False
    return (folder / DEMO_MARKER).exists() or not any(folder.iterdir())


def demo_env(folder: Path) -> dict[str, str]:
    """The environment of the embedded demo: nothing outside `folder` is touched."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CACHEWORK_")}
    env.update(
        CACHEWORK_DATA_DIR=str(folder),
        CACHEWORK_IMPORT_SCHEDULE="off",
        CACHEWORK_SYNC_SCHEDULE="off",
        CACHEWORK_LOG_LEVEL="INFO",
    )
    return env


@click.command()
@click.option(
    "--projects", default=3, show_default=True, type=click.IntRange(min=1), help="Projects to seed."
)
# The demo's version step changes products 1 to 3.
@click.option(
    "--products",
    default=60,
    show_default=True,
    type=click.IntRange(min=3),
    help="Products to seed.",
)
@click.option(
    "--folder",
    type=NulFreePath(path_type=Path),
    default=Path(".cachework/demo"),
    show_default=True,
    help="Where the demo keeps its database, broker and worker log (recreated).",
)
@click.option("--force", is_flag=True, help="Replace FOLDER even if it is not a demo's.")
def demo(projects: int, products: int, folder: Path, force: bool) -> None:
    """Seed the embedded database, start a real worker and run every job through it."""
    console = Console()
    folder = _fresh_folder(folder.resolve(), force)
    env = demo_env(folder)
    settings = load_settings(env)
    database = db.Database(settings.database_url, settings.database_pooler)
    worker = WorkerProcess(env, concurrency=2, name="demo@127.0.0.1", logfile=folder / "worker.log")
    try:
        models = _set_up(console, settings, database, projects, products)
        from cachework.worker import create_app

        app = create_app(settings)
        console.print(f"worker    starting {worker.name} (prefork, 2 children) ...")
        worker.start()
        worker.wait_ready(app, timeout=90)
        ctx = DemoContext(console, settings, env, database, models, app, worker)
        for step in DEMO_STEPS:
            module, func = step.split(":")
            getattr(importlib.import_module(module), func)(ctx)
        console.rule("[bold green]demo finished")
    finally:
        code = worker.stop()
        console.print(f"worker    stopped (exit code {code}); log in {folder / 'worker.log'}")
        database.dispose()


def _fresh_folder(folder: Path, force: bool) -> Path:
    """`folder` emptied for this demo; one that an earlier demo did not make is replaced
    only with --force."""
    if folder.exists() and not force and not _is_demo_folder(folder):
        raise click.BadParameter(  # a bad value of an option: a usage error, exit status 2
            f"{folder} exists and is not a folder an earlier demo made; it is replaced by "
            "the demo, so choose another --folder, or pass --force to replace it",
            param_hint="'--folder'",
        )
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    (folder / DEMO_MARKER).write_text("made by `cachework demo`; replaced by the next one\n")
    return folder


def _set_up(
    console: Console, settings: Settings, database: db.Database, projects: int, products: int
) -> Models:
    """The app's models booted, every table made, the demo's data seeded."""
    models = bootstrap(settings.models)
    tables = create_tables(database.engine, models)
    console.rule("[bold]cachework demo")
    console.print(f"database  {settings.database_url}")
    console.print(f"broker    {settings.broker_url} (folder {settings.broker_folder})")
    console.print(f"tables    {len(tables)}: {', '.join(tables)}")
    from demo.seed import seed

    with database.session() as session:
        counts = seed(session, projects=projects, products=products)
    console.print(f"seeded    {counts} (plain SQL inserts: no versions yet)")
    return models


COMMANDS = [demo]
