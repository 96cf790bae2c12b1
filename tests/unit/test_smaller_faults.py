"""Regression tests of issue 12, defect 9 (the smaller ones): status on a Redis broker,
`demo --folder` never deletes a folder it did not make, the lookup's retry budget rides
out a fast PostgreSQL restart, and every internal task has a route."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

from amqp.exceptions import ChannelError
from celery.utils.time import get_exponential_backoff_interval
from click.testing import CliRunner

from cachework.worker import routing


class _Channel:
    """A virtual (Redis-like) channel: a passive declare of an empty list fails."""

    def __init__(self, sizes: dict[str, int]) -> None:
        self.sizes = sizes

    def _size(self, name: str) -> int:
        return self.sizes.get(name, 0)

    def queue_declare(self, name, passive=False):
        raise ChannelError(f"Channel.queue_declare: (404) NOT_FOUND - no queue {name!r}", 0)

    def __enter__(self):
        return self

    def __exit__(self, *_exc):
        return False


class _App:
    def __init__(self, sizes: dict[str, int]) -> None:
        self.sizes = sizes

    @contextmanager
    def connection_for_read(self, **_kw):
        sizes = self.sizes

        class Conn:
            def channel(self):
                return _Channel(sizes)

        yield Conn()


def test_status_reads_queue_lengths_on_a_virtual_transport():
    """It showed "unknown (ChannelError)" for empty queues on a Redis broker."""
    from cachework.worker.cli.core import _queue_lengths

    lengths = _queue_lengths(_App({"cache": 3}), ("versions", "cache"))
    assert lengths == {"versions": 0, "cache": 3}


def test_demo_never_deletes_a_folder_it_did_not_make(tmp_path: Path):
    from cachework.worker.cli import main

    folder = tmp_path / "precious"
    folder.mkdir()
    (folder / "thesis.txt").write_text("years of work")
    result = CliRunner().invoke(main, ["demo", "--folder", str(folder)])
    assert result.exit_code != 0
    assert (folder / "thesis.txt").read_text() == "years of work"
    assert "--force" in result.output and "Traceback" not in result.output


def test_lookup_retries_for_longer_than_a_fast_postgres_restart():
    from cachework.tasks.tables import lookup

    waits = [
        get_exponential_backoff_interval(
            factor=int(lookup.retry_backoff),
            retries=n,
            maximum=lookup.retry_backoff_max,
            full_jitter=lookup.retry_jitter,
        )
        for n in range(lookup.max_retries)
    ]
    assert sum(waits) >= 20 and not lookup.retry_jitter, waits


def test_every_cachework_task_has_a_route(tmp_path: Path):
    from cachework.settings import load_settings
    from cachework.worker import create_app

    app = create_app(load_settings({"CACHEWORK_DATA_DIR": str(tmp_path)}))
    try:
        app.loader.import_default_modules()
        names = sorted(n for n in app.tasks if n.startswith("cachework."))
    finally:
        app.close()
    assert "cachework.sync_cache_summary" in names
    missing = [n for n in names if n not in routing.ROUTES]
    assert missing == [], missing
