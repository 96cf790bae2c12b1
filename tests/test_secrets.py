"""Regression tests of issue 12, defect 8: no credential is printed, in any form, and a
password a URL parser cannot read is a one-line error saying how to quote it."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from cache.errors import ConfigError
from cache.settings import load_settings, mask_url

SECRET = "s3cr3tPW"


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://app:{SECRET}@db.internal/app",
        f"postgresql://app@db.internal/app?password={SECRET}",
        f"postgresql://app@db.internal/app?sslmode=require&password={SECRET}&x=1",
        f"redis://:{SECRET}@127.0.0.1:6379/0",
        f"redis://127.0.0.1:6379/0?password={SECRET}",
        f"amqp://guest:{SECRET}@rabbit//",
        f"postgresql://app:{SECRET}#x@db/app",
        f"postgresql://app:{SECRET}?x@db/app",
        f"postgresql://app:{SECRET}/x@db/app",
        f"redis://:{SECRET}@x@127.0.0.1:6379/0",
    ],
)
def test_mask_url_hides_every_credential_form(url):
    masked = mask_url(url)
    assert SECRET not in masked and SECRET[:3] not in masked, masked
    assert "***" in masked


@pytest.mark.parametrize("char", ["#", "?", "/"])
@pytest.mark.parametrize(
    "variable",
    ["CACHEWORK_DATABASE_URL", "CACHEWORK_BROKER_URL", "CACHEWORK_REDIS_URL"],
)
def test_a_password_with_a_url_character_is_one_line_saying_how_to_quote(
    tmp_path: Path, variable, char
):
    scheme = "postgresql" if variable == "CACHEWORK_DATABASE_URL" else "redis"
    env = {
        "CACHEWORK_DATA_DIR": str(tmp_path),
        variable: f"{scheme}://app:{SECRET[:4]}{char}{SECRET[4:]}@127.0.0.1:5/0",
    }
    with pytest.raises(ConfigError) as caught:
        load_settings(env)
    message = str(caught.value)
    assert SECRET[:4] not in message and SECRET[4:] not in message, message
    assert "percent-encode" in message and variable in message
    assert "\n" not in message


@pytest.mark.parametrize("where", ["database", "broker"])
def test_status_never_prints_a_query_password(tmp_path: Path, monkeypatch, pg_url, where):
    from worker.cli import main

    monkeypatch.setenv("CACHEWORK_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("COLUMNS", "400")  # one line per row: a secret is never split
    if where == "database":
        monkeypatch.setenv("CACHEWORK_DATABASE_URL", f"{pg_url}?password={SECRET}")
    else:
        monkeypatch.setenv("CACHEWORK_BROKER_URL", f"redis://127.0.0.1:1/0?password={SECRET}")
    import worker
    from worker import celery_app

    monkeypatch.delitem(worker.__dict__, "app", raising=False)
    monkeypatch.delitem(celery_app.__dict__, "app", raising=False)
    result = CliRunner().invoke(main, ["status", "--timeout", "0.5"])
    assert SECRET not in result.output, result.output
    assert "***" in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
