"""The differential test against SQLAlchemy-Continuum itself, on SQLite and PostgreSQL,
for each app set-up (`tests/continuum_differential.py` runs one app in a process of its
own; Continuum's set-up is global to a process). It fails if one version row differs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
APPS = {
    # validity strategy, integer user key, TransactionMeta + TransactionChanges + PropertyModTracker
    "full": "tests.continuum_apps.full",
    # subquery strategy manager-wide (one model on validity), UUID user key, NullDelete
    "subquery": "tests.continuum_apps.subquery",
}
# Random sequences per run, after the fixed cases (`CASES`); CACHEWORK_DIFF_EXAMPLES overrides both.
EXAMPLES = {"sqlite": 25, "postgresql": 10}


@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
@pytest.mark.parametrize("app", sorted(APPS))
def test_import_writes_what_continuum_writes(app, dialect, tmp_path, request):
    if dialect == "postgresql":
        url = request.getfixturevalue("pg_server_url")
    else:
        url = f"sqlite:///{tmp_path / 'differential'}"
    examples = os.environ.get("CACHEWORK_DIFF_EXAMPLES", str(EXAMPLES[dialect]))
    done = subprocess.run(
        [sys.executable, "-W", "ignore", "-m", "tests.continuum_differential", APPS[app], url,
         examples],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0 and "ok:" in done.stdout, (done.stdout + done.stderr)[-8000:]
