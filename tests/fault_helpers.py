"""Helpers of the fault suite (tests/test_faults.py, `make faults`): a PostgreSQL server
of the suite's own (to restart it), process-tree signals, and the results table.

Everything binds to 127.0.0.1 on free ports, every wait is bounded, and every process and
folder is removed at the end. The shared services on 5432/6379/5672 are never stopped.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa

from tests.invalidation_helpers import free_port, wait_until

ROOT = Path(__file__).resolve().parent.parent


def _pg_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    if not found:
        raise FileNotFoundError("no /usr/lib/postgresql/*/bin/pg_ctl")
    return Path(found[-1]).parent


class OwnPostgres:
    """initdb + pg_ctl into a temporary folder, on a free loopback port, trust auth, no
    fsync (a crash of the test machine loses nothing that matters). Run as the `postgres`
    user when the suite runs as root (initdb refuses root)."""

    def __init__(self) -> None:
        self.bin = _pg_bin()
        self.folder = Path(tempfile.mkdtemp(prefix="cachework-faults-pg-"))
        self.data = self.folder / "data"
        self.port = free_port()
        self.as_root = os.geteuid() == 0

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str, timeout: float = 120) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if self.as_root else []
        subprocess.run(
            [*prefix, *args], check=True, capture_output=True, timeout=timeout, cwd=self.folder
        )

    def init(self) -> OwnPostgres:
        if self.as_root:
            shutil.chown(self.folder, "postgres", "postgres")
        self._run(
            str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres",
            "-E", "UTF8", "--no-sync",
        )  # fmt: skip
        return self

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off"
        )
        self._run(
            str(self.bin / "pg_ctl"), "-D", str(self.data), "-o", options, "-w", "-t", "60",
            "-l", str(self.folder / "server.log"), "start",
        )  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def restart(self, down_for: float) -> None:
        self.stop()
        time.sleep(down_for)
        self.start()

    def destroy(self) -> None:
        with contextlib.suppress(Exception):
            self.stop("immediate")
        shutil.rmtree(self.folder, ignore_errors=True)


def children_of(pid: int) -> list[int]:
    """Direct children of `pid` (from /proc)."""
    found = []
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            fields = Path(stat).read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(Path(stat).parent.name))
    return found


def kill_group(pid: int) -> None:
    """SIGKILL a whole worker: its process group (main process and pool children)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(os.getpgid(pid), signal.SIGKILL)


def engine_for(url: str) -> sa.Engine:
    return sa.create_engine(url, poolclass=sa.pool.NullPool)


@dataclass
class Row:
    scenario: str
    tries: int = 0
    completed: int = 0
    lost: int = 0
    stale: int = 0
    partial: int = 0
    mid_run: int = 0  # tries whose fault hit before the job committed (not after it)
    notes: list[str] = field(default_factory=list)


class Table:
    """The suite's results: one row per scenario, written to a Markdown file at the end.

    Each row notes when it was first added (UTC) and the command of the run, so a table
    in the docs may join rows of several runs."""

    def __init__(self) -> None:
        self.rows: dict[str, Row] = {}
        self.origin: dict[str, str] = {}

    def row(self, scenario: str) -> Row:
        if scenario not in self.rows:
            self.rows[scenario] = Row(scenario)
            self.origin[scenario] = stamp()
        return self.rows[scenario]

    def markdown(self) -> str:
        lines = [
            "| scenario | tries | completed | lost | stale | partial | fault before commit |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for r in self.rows.values():
            lines.append(
                f"| {r.scenario} | {r.tries} | {r.completed} | {r.lost} | {r.stale} | "
                f"{r.partial} | {r.mid_run or '-'} |"
            )
        return "\n".join(lines)


def stamp() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")


def command_of(config) -> str:
    """The command a pytest run was started with (`make faults` runs `python -m pytest -m
    faults`)."""
    args = list(config.invocation_params.args)
    return "python -m pytest " + shlex.join(args) if args else "python -m pytest"


# Every fault module adds its rows here; tests/conftest.py writes the report at the end.
TABLE = Table()
REPORT = ROOT / ".cachework" / "faults-report.md"


def write_report(config) -> str | None:
    """The results table with each row's run and command, to REPORT; None without rows."""
    if not TABLE.rows:
        return None
    command = command_of(config)
    lines = TABLE.markdown().splitlines()
    lines[0] += " run | command |"
    lines[1] += " --- | --- |"
    for index, row in enumerate(TABLE.rows.values(), start=2):
        lines[index] += f" {TABLE.origin[row.scenario]} | `{command}` |"
    text = f"fault suite run of {stamp()} (`{command}`)\n\n" + "\n".join(lines) + "\n"
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text(text)
    return text


__all__ = [
    "REPORT",
    "ROOT",
    "TABLE",
    "OwnPostgres",
    "Row",
    "Table",
    "children_of",
    "engine_for",
    "free_port",
    "kill_group",
    "wait_until",
    "write_report",
]
