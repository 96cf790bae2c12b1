"""Regression tests of issue 12, defect 8: no credential is printed, in any form, and a
password a URL parser cannot read is a one-line error saying how to quote it."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

import pytest
from click.testing import CliRunner

from cachework.errors import ConfigError
from cachework.settings import check_url, load_settings, mask_url

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
        f"redis://:{SECRET}/x@y/z@127.0.0.1:6379/0?user=a@b",
        f"redis://:{SECRET};x@127.0.0.1:6379/0",
        f"amqp://u:p1@h1//;amqp://u:{SECRET}@h2//",
        f"amqp://u:p1@h1//;amqp://u:{SECRET}/x@h2//",
        f"azureblockblob://DefaultEndpointsProtocol=https;AccountName=a;AccountKey={SECRET}",
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


DIGITS_FIRST = "2024/Winter"  # once let through: 'host:port/path' by the look of it


@pytest.mark.parametrize(
    "variable", ["CACHEWORK_BROKER_URL", "CACHEWORK_REDIS_URL", "CACHEWORK_RESULT_BACKEND"]
)
def test_a_password_of_digits_then_a_slash_is_refused_and_masked(tmp_path: Path, variable):
    url = f"redis://:{DIGITS_FIRST}@broker.internal:6379/0"
    assert mask_url(url) == "redis://:***@broker.internal:6379/0"
    with pytest.raises(ConfigError) as caught:
        load_settings({"CACHEWORK_DATA_DIR": str(tmp_path), variable: url})
    message = str(caught.value)
    assert "2024" not in message and "Winter" not in message, message
    assert variable in message and "percent-encode" in message and "%2F" in message


def test_every_url_of_a_failover_list_is_masked_and_checked(tmp_path: Path):
    urls = f"amqp://u:p1@h1//;amqp://u:{SECRET}@h2//"
    assert mask_url(urls) == "amqp://u:***@h1//;amqp://u:***@h2//"
    env = {"CACHEWORK_DATA_DIR": str(tmp_path), "CACHEWORK_BROKER_URL": urls}
    assert load_settings(env).broker_url == urls
    for bad in (f"{SECRET[:4]}/{SECRET[4:]}", f"{SECRET[:4]};{SECRET[4:]}"):
        env["CACHEWORK_BROKER_URL"] = f"amqp://u:p1@h1//;amqp://u:{bad}@h2//"
        with pytest.raises(ConfigError, match=r"CACHEWORK_BROKER_URL.*percent-encode") as caught:
            load_settings(env)
        assert SECRET[:4] not in str(caught.value) and SECRET[4:] not in str(caught.value)


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6379/0",
        "redis://:pw@h:6379/0",
        "redis://[::1]:6379/0",
        "postgresql+psycopg://u:p@h:5432/db?sslmode=require",
        "sqlite:///path/to/file.db",
        "sqlite:////abs/path@weird/name.db",  # no network location: '@' in a file name
        "amqp://guest:guest@127.0.0.1:5672//",
        "redis+socket:///tmp/redis.sock",
        "memory://",
        "filesystem://",
        "redis://h:6379/0?user=a@b",
        "redis://h:6379?user=a@b",
        "cache+memcached://h1:11211;h2:11211/",
    ],
)
def test_a_url_without_an_ambiguous_password_passes(url):
    check_url("CACHEWORK_X", url)
    if urlsplit(url).password is None:
        assert mask_url(url) == url


def test_a_query_with_an_at_still_has_its_password_masked():
    url = f"redis://h:6379/0?user=a@b&password={SECRET}"
    check_url("CACHEWORK_REDIS_URL", url)
    assert mask_url(url) == "redis://h:6379/0?user=a@b&password=***"


@pytest.mark.parametrize("where", ["database", "broker"])
def test_status_never_prints_a_query_password(tmp_path: Path, monkeypatch, pg_url, where):
    from cachework.worker.cli import main

    monkeypatch.setenv("CACHEWORK_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("COLUMNS", "400")  # one line per row: a secret is never split
    if where == "database":
        monkeypatch.setenv("CACHEWORK_DATABASE_URL", f"{pg_url}?password={SECRET}")
    else:
        monkeypatch.setenv("CACHEWORK_BROKER_URL", f"redis://127.0.0.1:1/0?password={SECRET}")
    from cachework import worker
    from cachework.worker import celery_app

    monkeypatch.delitem(worker.__dict__, "app", raising=False)
    monkeypatch.delitem(celery_app.__dict__, "app", raising=False)
    result = CliRunner().invoke(main, ["status", "--timeout", "0.5"])
    assert SECRET not in result.output, result.output
    assert "***" in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
