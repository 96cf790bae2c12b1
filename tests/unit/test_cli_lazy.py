"""The `cachework` command table (worker/cli COMMANDS): each command is where the table
says, with the help line the table gives, and `--help` imports no command module."""

from __future__ import annotations

import importlib
import subprocess
import sys

import click
import pytest

from cachework.worker.cli import COMMAND_MODULES, COMMANDS, main


def test_every_command_is_in_the_table_with_its_module_and_help():
    found = {}
    for module in COMMAND_MODULES:
        for command in importlib.import_module(module).COMMANDS:
            found[command.name] = (module, command.get_short_help_str(limit=10_000))
    assert found == COMMANDS


@pytest.mark.parametrize("limit", [20, 45, 59, 200])
def test_the_help_lines_are_cut_as_click_cuts_the_commands_own(limit):
    for name, (module, summary) in COMMANDS.items():
        command = next(c for c in importlib.import_module(module).COMMANDS if c.name == name)
        listed = click.Command(name, help=summary)  # how the help lists it
        assert listed.get_short_help_str(limit) == command.get_short_help_str(limit)


def test_a_command_loads_its_own_module():
    command = main.get_command(click.Context(main), "health")
    assert command is not None and command.name == "health"
    assert main.get_command(click.Context(main), "no-such-command") is None


def test_help_imports_no_command_module():
    """`cachework --help` lists every command without importing their modules (nor
    SQLAlchemy, Celery, Alembic, Continuum)."""
    heavy = [*COMMAND_MODULES, "sqlalchemy", "celery", "alembic", "sqlalchemy_continuum"]
    script = (
        "import sys\n"
        "from cachework.worker.cli import main\n"
        "try:\n"
        "    main(['--help'], prog_name='cachework')\n"
        "except SystemExit:\n"
        "    pass\n"
        f"print('IMPORTED', [m for m in {heavy!r} if m in sys.modules])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert "Commands:" in done.stdout
    for name in COMMANDS:
        assert f"  {name} " in done.stdout
    assert done.stdout.strip().splitlines()[-1] == "IMPORTED []"
