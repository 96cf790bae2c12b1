"""Regression tests of issue 12, defect 10: the suite is safe to run next to anything
else. It starts a redis-server of its own instead of claiming and flushing db numbers of
whatever Redis listens on 6379, and removes its temporary folders."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import redis

REDIS_OVERRIDE = os.environ.get("CACHEWORK_TEST_REDIS")

ROOT = Path(__file__).resolve().parent.parent


def _parent_of(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[1])


@pytest.mark.skipif(bool(REDIS_OVERRIDE), reason="CACHEWORK_TEST_REDIS names a Redis to use")
def test_the_suite_runs_a_redis_server_of_its_own(redis_server_url):
    parts = urlsplit(redis_server_url)
    assert parts.hostname == "127.0.0.1" and parts.port != 6379
    client = redis.Redis.from_url(redis_server_url)
    try:
        server_pid = int(client.info("server")["process_id"])
    finally:
        client.close()
    assert _parent_of(server_pid) == os.getpid()  # started (and stopped) by this run


def test_a_run_leaves_no_temporary_folder(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("CACHEWORK_")}
    env["TMPDIR"] = str(tmp_path)
    done = subprocess.run(
        [
            sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
            "tests/unit/test_settings.py::test_mask_url_hides_only_the_password",
        ],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert not list(tmp_path.glob("cachework-tests-*"))
