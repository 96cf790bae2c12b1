"""Fault suite (marker `faults`): the bad-input matrix over every task and every CLI
command (the inputs are in tests/fault_inputs.py). Each bad call fails with one line and
writes nothing. Split out of tests/test_faults.py; each adds its row to the results table."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import sqlalchemy as sa
from click.testing import CliRunner

from cachework.cache.invalidation import RedisLog
from cachework.errors import MESSAGE_MAX
from tests.fault_helpers import TABLE, kill_group, wait_until
from tests.fault_inputs import BAD_COMMANDS, BAD_SUBPROCESS_COMMANDS, BAD_TASKS, TASK_NAMES
from tests.fault_nodes import Node, traffic_environment

pytestmark = pytest.mark.faults


@pytest.fixture(scope="module")
def traffic(pg_server_url, redis_server_url, tmp_path_factory) -> Iterator[dict]:
    yield from traffic_environment(pg_server_url, redis_server_url, tmp_path_factory)


def _written(engine: sa.Engine, log: RedisLog) -> tuple:
    with engine.connect() as conn:
        counts = tuple(
            conn.execute(sa.text(f"SELECT count(*) FROM {t}")).scalar_one()
            for t in (
                "cache_items",
                "transaction",
                "products_version",
                "invalidation_outbox",
                "products",
                "projects",
            )
        )
    return (*counts, log.state().head)


def _call(entry: tuple) -> tuple[str, dict, list]:
    name, kwargs, *rest = entry
    return name, kwargs, rest[0] if rest else []


def _shown(kwargs: dict, args: list) -> str:
    return json.dumps({"args": args, "kwargs": kwargs})[:80]


STORED_MAX = 16_000  # bytes of a failed call's stored result (meta, args and kwargs)


def _worker_lines(nodes: Node, task_id: str) -> list[str]:
    """The worker log's lines that name `task_id`, and any traceback line right after."""
    found: list[str] = []
    for node in nodes.nodes:
        lines = node.logfile.read_text(errors="replace").splitlines()
        for index, line in enumerate(lines):
            if task_id in line:
                found.append(line)
                following = lines[index + 1] if index + 1 < len(lines) else ""
                if following.startswith("Traceback"):
                    found.append(following)
    return found


def _log_problem(nodes: Node, task_id: str) -> str | None:
    """None if the worker logged the failure of `task_id` as one WARNING line ("raised
    expected", no traceback, bounded), else what it logged."""
    said: list[str] = []

    def logged() -> bool:  # the worker logs the failure just after storing its result
        said[:] = _worker_lines(nodes, task_id)
        return any("raised" in line for line in said)

    with contextlib.suppress(AssertionError):  # said is what it logged, if anything
        wait_until(logged, timeout=10, every=0.1)
    raised = [line for line in said if "raised" in line]
    expected = [line for line in raised if " WARNING " in line and "raised expected" in line]
    if len(raised) != 1 or len(expected) != 1 or any("Traceback" in x for x in said):
        return f"log {said[-3:]}"
    if len(expected[0]) > MESSAGE_MAX + 300:
        return f"a log line of {len(expected[0])} characters"
    return None


def test_bad_input_over_every_task_is_one_line_and_writes_nothing(traffic):
    """Every task, sent by name as any client does: each bad call fails with one line (in
    its result and as one WARNING line in the worker log, no traceback), stores a bounded
    result (a long argument cut, short ones kept as sent), and nothing is written."""
    engine, nodes, log = traffic["engine"], traffic["nodes"], traffic["log"]
    row = TABLE.row(f"bad input: every task ({len(TASK_NAMES)} tasks, {len(BAD_TASKS)} calls)")
    backend = redis.Redis.from_url(nodes.env["CACHEWORK_RESULT_BACKEND"])
    before = _written(engine, log)
    try:
        for entry in BAD_TASKS:
            name, kwargs, args = _call(entry)
            row.tries += 1
            result = nodes.app.send_task(name, args=args, kwargs=kwargs)
            with pytest.raises(Exception) as caught:
                result.get(timeout=60, interval=0.05)
            message = str(caught.value)
            stored = backend.get(f"celery-task-meta-{result.id}") or b""
            meta = json.loads(stored) if stored else {}
            problems = []
            if "\n" in message or len(message) > MESSAGE_MAX + 40:
                problems.append(f"message of {len(message)} characters")
            if result.state != "FAILURE" or not caught.type.__name__.endswith("Error"):
                problems.append(f"{result.state} {caught.type.__name__}")
            if not stored or len(stored) > STORED_MAX:
                problems.append(f"stored result of {len(stored)} bytes")
            small = len(json.dumps([args, kwargs])) < 200
            if small and (meta.get("kwargs"), meta.get("args")) != (kwargs, args):
                problems.append(f"stored request {meta.get('args')} {meta.get('kwargs')}")
            logged = _log_problem(nodes, result.id)
            if logged is not None:
                problems.append(logged)
            if problems:
                row.notes.append(f"{name} {_shown(kwargs, args)}: {problems} {message[:100]}")
            else:
                row.completed += 1
    finally:
        backend.close()
    if _written(engine, log) != before:
        row.partial += 1
    assert row.completed == row.tries and row.partial == 0, row.notes


def _line_of(output: str, code: int) -> str | None:
    """The problem with a refused command's output and exit status, or None: exit status
    2 and one line `error: ...`, naming the command's help when click refused it."""
    lines = output.strip().splitlines()
    if code != 2 or len(lines) != 1 or not lines[0].startswith("error: "):
        return f"exit {code}: {output[:200]!r}"
    if len(lines[0]) > MESSAGE_MAX + 80:
        return f"a line of {len(lines[0])} characters"
    return None


def _refused_in_process(args: list[str], monkeypatch: pytest.MonkeyPatch) -> str | None:
    """Run `cachework ARGS` in this process (CliRunner), closing any app an --enqueue
    command made: the problem with its output, or None."""
    from cachework import worker
    from cachework.worker import celery_app
    from cachework.worker.cli import main

    monkeypatch.delitem(worker.__dict__, "app", raising=False)
    monkeypatch.delitem(celery_app.__dict__, "app", raising=False)
    try:
        result = CliRunner().invoke(main, args, prog_name="cachework")
    finally:
        app = celery_app.__dict__.pop("app", None)
        if app is not None:  # made by an --enqueue command
            app.runtime.close()
            app.close()
    return _line_of(result.output, result.exit_code)


def _cachework_command() -> list[str]:
    """The installed `cachework` script, else the same entry point through python -c."""
    exe = Path(sys.executable).parent / "cachework"
    if exe.exists():
        return [str(exe)]
    return [
        sys.executable,
        "-c",
        "from cachework.worker.cli import main; main(prog_name='cachework')",
    ]


def _refused_in_subprocess(cachework: list[str], argv: list[str], env: dict) -> str | None:
    """Run `cachework ARGV` as a subprocess, killed after 60 s (accepted by mistake, it
    would keep running): the problem with its output, or None."""
    proc = subprocess.Popen(
        [*cachework, *argv],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:  # accepted: a worker or the demo is running
        kill_group(proc.pid)
        output, _ = proc.communicate(timeout=30)
    return _line_of(output, proc.returncode)


def test_bad_input_over_every_command_is_one_line_and_writes_nothing(
    traffic, monkeypatch, tmp_path
):
    engine, nodes, log = traffic["engine"], traffic["nodes"], traffic["log"]
    commands = {args[0] for args in BAD_COMMANDS + BAD_SUBPROCESS_COMMANDS} - {"nope", "--bogus"}
    row = TABLE.row(
        f"bad input: every CLI command ({len(commands)} commands, "
        f"{len(BAD_COMMANDS) + len(BAD_SUBPROCESS_COMMANDS)} calls)"
    )
    for name, value in nodes.env.items():
        if name.startswith("CACHEWORK_"):
            monkeypatch.setenv(name, value)
    before = _written(engine, log)
    for args in BAD_COMMANDS:
        row.tries += 1
        problem = _refused_in_process(args, monkeypatch)
        if problem is None:
            row.completed += 1
        else:
            row.notes.append(f"{[a[:20] for a in args[:4]]}: {problem}")

    cachework = _cachework_command()
    not_a_demo = tmp_path / "not-a-demo"
    not_a_demo.write_text("a file of the test's own; the demo must not replace it\n")
    demo_folder = tmp_path / "demo"
    for args in BAD_SUBPROCESS_COMMANDS:
        row.tries += 1
        argv = [a.format(file=not_a_demo) for a in args]
        if argv[0] == "demo" and "--folder" not in argv:
            argv += ["--folder", str(demo_folder)]
        problem = _refused_in_subprocess(cachework, argv, nodes.env)
        if problem is None:
            row.completed += 1
        else:
            row.notes.append(f"{argv[:3]}: {problem}")
    replaced = not not_a_demo.is_file()
    if _written(engine, log) != before or demo_folder.exists() or replaced:
        row.partial += 1
    assert row.completed == row.tries and row.partial == 0, row.notes
