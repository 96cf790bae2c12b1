"""`cachework` usage errors and help, in-process (click's CliRunner runs the same `main`
group a process does): a bad option, argument or command is one `error:` line naming it
and its value, exit 2; --help is click's own. tests/test_cli.py runs one of each in a
process of its own (the real entry point); the whole table runs here, where a case takes
milliseconds instead of a process start of a second or more."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from cachework.errors import MESSAGE_MAX
from tests.conftest import assert_one_usage_line, make_env


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Run `cachework ARGS` in-process with a test environment (as `make_env` gives a
    worker); returns click's Result (stdout and stderr apart)."""
    from cachework import worker
    from cachework.worker import celery_app
    from cachework.worker.cli import main

    for name, value in make_env(tmp_path).items():
        if name.startswith("CACHEWORK_"):
            monkeypatch.setenv(name, value)

    def run(*args: str):
        monkeypatch.delitem(worker.__dict__, "app", raising=False)
        monkeypatch.delitem(celery_app.__dict__, "app", raising=False)
        try:
            return CliRunner().invoke(main, list(args), prog_name="cachework")
        finally:
            app = celery_app.__dict__.pop("app", None)
            if app is not None:
                app.runtime.close()
                app.close()

    return run


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["status", "--timeout", "-1"], ["'--timeout'", "-1.0", "cachework status --help"]),
        (["status", "--timeout", "nan"], ["'--timeout'", "nan is not a finite number"]),
        (["health", "--timeout", "-5"], ["'--timeout'", "-5.0", "cachework health --help"]),
        (["health", "--liveness", "--timeout", "0"], ["'--timeout'", "0.0 is not in the range"]),
        (["sync-cache", "--enqueue", "--timeout", "inf"], ["'--timeout'", "inf"]),
        (["import-versions", "--max-changes", "ten"], ["'--max-changes'", "'ten'"]),
        (["invalidate"], ["Missing argument 'TABLE'", "cachework invalidate --help"]),
        (["demo", "--products", "1"], ["'--products'", "1 is not in the range x>=3"]),
        (["db", "nope"], ["No such command 'nope'", "cachework db --help"]),
        (["initdb", "extra"], ["unexpected extra argument (extra)"]),
        (["nope"], ["No such command 'nope'", "(see cachework --help)"]),
        (["--bogus"], ["No such option '--bogus'"]),
    ],
)
def test_a_usage_error_is_one_line_naming_option_and_value(cli, args, words, tmp_path: Path):
    """click printed Usage, Try and Error lines; one `error:` line says it all, exit 2."""
    done = cli(*args)
    assert_one_usage_line(done.exit_code, done.stdout, done.stderr, words, tmp_path)


def test_a_long_usage_error_keeps_its_help_pointer_within_the_limit(cli):
    """The pointer to --help is part of the 600 characters (it was added after the cut)."""
    done = cli("import-versions", "--max-changes", "x" * 5000)
    line = done.stderr.strip()
    assert done.exit_code == 2 and line.startswith("error: "), done.stderr
    assert len(line) - len("error: ") <= MESSAGE_MAX, len(line)
    assert line.endswith("(see cachework import-versions --help)") and "characters cut" in line


@pytest.mark.parametrize("args", [["--help"], ["status", "--help"], [], ["db"]])
def test_help_is_unchanged(cli, args):
    """--help (and a group without its command: on stderr, exit 2) still prints click's
    usage and help."""
    done = cli(*args)
    text = done.stdout + done.stderr
    assert text.startswith("Usage: cachework") and ("Commands:" in text or "--timeout" in text)
    assert "error:" not in text and done.exit_code == (0 if "--help" in args else 2)
