"""The one place that reads the `CACHEWORK_*` environment.

`load_settings()` turns the environment into a frozen `Settings`, filling the embedded
defaults (a SQLite file, kombu's `filesystem://` broker in `.cachework/`, results in the
database) and checking every value up front, so a typo fails at start-up with a message that
names the variable and the value instead of a traceback deep inside a task.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

from cachework.env_values import bool_value, float_value, int_value, module_list
from cachework.errors import ConfigError
from cachework.pooler import parse_pooler, prepare_threshold
from cachework.typed_settings import Settings
from cachework.urls import (
    QUOTING_HINT,
    REDIS_SCHEMES,
    check_url,
    mask_url,
    scheme,
    sentinel_client_url,
)

__all__ = [  # with the names that moved out (URLs, Settings), importable from here
    "BROKER_SCHEMES",
    "DATABASE_SCHEMES",
    "EXAMPLE_MODELS",
    "QUOTING_HINT",
    "REDIS_SCHEMES",
    "RESULT_BACKENDS",
    "Settings",
    "check_url",
    "load_settings",
    "mask_url",
    "sentinel_client_url",
]

DATABASE_SCHEMES = {
    "sqlite": "sqlite",
    "sqlite+pysqlite": "sqlite",
    "postgresql": "postgresql+psycopg",
    "postgres": "postgresql+psycopg",
    "postgresql+psycopg": "postgresql+psycopg",
}
# Celery's result backend aliases (celery.app.backends.BACKEND_ALIASES, checked by a test):
# kept here so reading settings never imports Celery (a web process needs none).
RESULT_BACKENDS = frozenset(
    {
        "arangodb", "azureblockblob", "cache", "cassandra", "consul", "cosmosdbsql",
        "couchbase", "couchdb", "database", "db", "disabled", "dynamodb", "elasticsearch",
        "file", "gs", "mongodb", "redis", "rediss", "riak", "rpc", "s3", "sentinel",
    }
)  # fmt: skip
BROKER_SCHEMES = (
    "filesystem", "redis", "rediss", "sentinel", "amqp", "amqps", "pyamqp", "memory",
)  # fmt: skip
EXAMPLE_MODELS = "demo.models"
OFF = ("", "off", "none", "false", "0", "no")


def _soft_shutdown_timeout(env: Mapping[str, str]) -> float:
    """CACHEWORK_SOFT_SHUTDOWN_TIMEOUT: finite seconds, 0 or `off` for none (an infinite
    wait would outlive any terminationGracePeriodSeconds and end in SIGKILL)."""
    name = "CACHEWORK_SOFT_SHUTDOWN_TIMEOUT"
    raw = env.get(name, "")
    if raw.strip().lower() in ("", "off"):
        return 0.0
    value = float_value(env, name, 0.0)
    if not math.isfinite(value):
        raise ConfigError(f"{name}={raw!r} is not a finite number of seconds (or off)")
    return value


def _database_url(env: Mapping[str, str], data_dir: Path) -> str:
    raw = env.get("CACHEWORK_DATABASE_URL", "").strip()
    if not raw:
        return f"sqlite:///{(data_dir / 'cachework.db').as_posix()}"
    given = scheme(raw)
    if given not in DATABASE_SCHEMES:
        valid = ", ".join(sorted({s.split("+")[0] + "://" for s in DATABASE_SCHEMES}))
        raise ConfigError(
            f"CACHEWORK_DATABASE_URL={mask_url(raw)!r} has unknown scheme {given!r}; "
            f"use one of {valid}"
        )
    check_url("CACHEWORK_DATABASE_URL", raw)
    return DATABASE_SCHEMES[given] + raw[len(given) :]


def _broker_url(env: Mapping[str, str]) -> str:
    raw = env.get("CACHEWORK_BROKER_URL", "").strip() or "filesystem://"
    given = scheme(raw)
    if given not in BROKER_SCHEMES:
        raise ConfigError(
            f"CACHEWORK_BROKER_URL={mask_url(raw)!r} has unknown scheme {given!r}; "
            f"use one of {', '.join(s + '://' for s in BROKER_SCHEMES)}"
        )
    check_url("CACHEWORK_BROKER_URL", raw)
    return raw


def _result_backend(env: Mapping[str, str], database_url: str) -> str:
    raw = env.get("CACHEWORK_RESULT_BACKEND", "").strip()
    if not raw:
        return "db+" + database_url
    # Celery's own rule (celery.app.backends.by_url): the scheme, or what precedes its "+".
    name = scheme(raw).split("+", 1)[0] if "://" in raw else raw
    if name not in RESULT_BACKENDS and not (":" in name and "://" not in raw):
        raise ConfigError(
            f"CACHEWORK_RESULT_BACKEND={mask_url(raw)!r} names unknown result backend "
            f"{name!r}; use e.g. db+postgresql://..., redis://..., rpc:// or disabled"
        )
    check_url("CACHEWORK_RESULT_BACKEND", raw)
    return raw


def _sentinel(name: str, raw: str, master: str | None, *, in_query: bool = False) -> None:
    """ConfigError naming `name` when its sentinel:// list is malformed or no master name
    is known (CACHEWORK_REDIS_MASTER_NAME; for CACHEWORK_REDIS_URL, `in_query`, also
    ?master_name=; kombu and Celery read it only from their transport options)."""
    named = False
    for part in (p.strip() for p in raw.split(";")):
        try:
            parts = urlsplit(part)
            parts.port  # noqa: B018 - raises on a port that is not a number
        except ValueError:
            parts = None
        if parts is None or scheme(part) != "sentinel" or not parts.hostname:
            raise ConfigError(
                f"{name}={mask_url(raw)!r} is not a list of sentinel://host:port URLs "
                "separated by ';' (e.g. sentinel://h1:26379;sentinel://h2:26379/0)"
            )
        named = named or (in_query and "master_name" in dict(parse_qsl(parts.query)))
    if not master and not named:
        raise ConfigError(
            f"{name}={mask_url(raw)!r} is a Redis Sentinel URL but no master name is set: "
            "set CACHEWORK_REDIS_MASTER_NAME to the name in `sentinel monitor <name> ...`"
        )


def _master_name(env: Mapping[str, str]) -> str | None:
    raw = env.get("CACHEWORK_REDIS_MASTER_NAME", "").strip()
    if raw and not all(c.isalnum() or c in "-_.:" for c in raw):
        raise ConfigError(
            f"CACHEWORK_REDIS_MASTER_NAME={raw!r} is not a Sentinel master name "
            "(letters, digits, '-', '_', '.', ':')"
        )
    return raw or None


def _redis_url(
    env: Mapping[str, str],
    broker_url: str,
    master: str | None = None,
    sentinel_auth: tuple[str | None, str | None] = (None, None),
) -> str | None:
    raw = env.get("CACHEWORK_REDIS_URL", "").strip()
    if raw.lower() in ("off", "none"):
        return None
    if raw:
        if scheme(raw) not in REDIS_SCHEMES:
            raise ConfigError(
                f"CACHEWORK_REDIS_URL={mask_url(raw)!r} is not a redis://, rediss:// or "
                "sentinel:// URL"
            )
        check_url("CACHEWORK_REDIS_URL", raw)
        if scheme(raw) == "sentinel":
            _sentinel("CACHEWORK_REDIS_URL", raw, master, in_query=True)
        return sentinel_client_url(raw, master, *sentinel_auth)
    if scheme(broker_url) not in REDIS_SCHEMES:
        return None
    return sentinel_client_url(broker_url, master, *sentinel_auth)


def _sentinel_options(
    master: str | None, username: str | None, password: str | None, timeout: float = 5.0
) -> dict:
    """kombu's and Celery's transport options for a sentinel:// broker or result backend:
    the master's name and how to reach the sentinels (bounded, with their credentials)."""
    kwargs: dict = {"socket_timeout": timeout, "socket_connect_timeout": timeout}
    if username:
        kwargs["username"] = username
    if password:
        kwargs["password"] = password
    return {"master_name": master, "sentinel_kwargs": kwargs}


def _import_schedule(env: Mapping[str, str]) -> str | None:
    raw = env.get("CACHEWORK_IMPORT_SCHEDULE")
    if raw is None:
        return "0 3 * * *"
    if raw.strip().lower() in OFF:
        return None
    if len(raw.split()) != 5:
        raise ConfigError(
            f"CACHEWORK_IMPORT_SCHEDULE={raw!r} is not a five-field crontab "
            "(minute hour day-of-month month day-of-week) or 'off'"
        )
    return raw.strip()


def _sync_schedule(env: Mapping[str, str]) -> float | None:
    raw = env.get("CACHEWORK_SYNC_SCHEDULE")
    if raw is not None and raw.strip().lower() in OFF:
        return None
    return float_value(env, "CACHEWORK_SYNC_SCHEDULE", 86_400.0, minimum=1.0)


def _projects(env: Mapping[str, str], example: bool) -> tuple[str, str, str | None] | None:
    """CACHEWORK_PROJECTS=[schema.]table.column[:uuid|int|text], or `off` (the default for
    an app other than the example app, whose projects are `projects.uuid`)."""
    raw = env.get("CACHEWORK_PROJECTS")
    if raw is None or not raw.strip():
        return ("projects", "uuid", "uuid") if example else None
    value = raw.strip()
    if value.lower() in ("off", "none"):
        return None
    path, colon, key_type = value.partition(":")
    parts = path.split(".")
    key_type = key_type.strip().lower() if colon else None
    if (
        len(parts) not in (2, 3)
        or not all(p.isidentifier() and p.isascii() for p in parts)
        or key_type not in (None, "uuid", "int", "text")
    ):
        raise ConfigError(
            f"CACHEWORK_PROJECTS={raw!r} is not [schema.]table.column[:uuid|int|text] or "
            "'off' (e.g. projectroles_project.sodar_uuid:uuid)"
        )
    return (".".join(parts[:-1]), parts[-1], key_type)


def _metrics_port(env: Mapping[str, str]) -> int | None:
    raw = env.get("CACHEWORK_METRICS_PORT")
    if raw is None or raw.strip().lower() in OFF:
        return None
    try:
        port = int(raw)
    except ValueError:
        port = 0
    if not 1 <= port <= 65535:
        raise ConfigError(f"CACHEWORK_METRICS_PORT={raw!r} is not a TCP port (1-65535) or 'off'")
    return port


def _metrics_bind(env: Mapping[str, str]) -> str:
    raw = env.get("CACHEWORK_METRICS_BIND", "").strip() or "127.0.0.1"
    if not all(c.isalnum() or c in ".-:_" for c in raw):
        raise ConfigError(
            f"CACHEWORK_METRICS_BIND={raw!r} is not an address to listen on "
            "(e.g. 127.0.0.1, 0.0.0.0 or ::)"
        )
    return raw


def _log_format(env: Mapping[str, str]) -> str:
    raw = env.get("CACHEWORK_LOG_FORMAT", "")
    value = raw.strip().lower() or "text"
    if value not in ("text", "json"):
        raise ConfigError(f"CACHEWORK_LOG_FORMAT={raw!r} is not one of text, json")
    return value


def _database_pooler(env: Mapping[str, str], database_url: str) -> str:
    """CACHEWORK_DATABASE_POOLER, and the URL's own `prepare_threshold` checked at load."""
    prepare_threshold(database_url)
    result_backend = env.get("CACHEWORK_RESULT_BACKEND", "").strip()
    if result_backend.startswith("db+postgresql+psycopg"):
        prepare_threshold(result_backend[3:], "CACHEWORK_RESULT_BACKEND")
    return parse_pooler(env.get("CACHEWORK_DATABASE_POOLER"), database_url)


QUEUE_TYPES = ("classic", "quorum")
AMQP_SCHEMES = ("amqp", "amqps", "pyamqp")


def _queue_type(env: Mapping[str, str], broker_url: str) -> str:
    """CACHEWORK_QUEUE_TYPE: classic (the default) or quorum, which only RabbitMQ has: a
    ConfigError on another broker rather than a setting silently ignored."""
    raw = env.get("CACHEWORK_QUEUE_TYPE", "")
    value = raw.strip().lower() or "classic"
    if value not in QUEUE_TYPES:
        raise ConfigError(f"CACHEWORK_QUEUE_TYPE={raw!r} is not one of classic, quorum")
    if value == "quorum" and scheme(broker_url) not in AMQP_SCHEMES:
        raise ConfigError(
            f"CACHEWORK_QUEUE_TYPE={raw!r} needs a RabbitMQ broker (amqp://, amqps://); "
            f"CACHEWORK_BROKER_URL is {mask_url(broker_url)!r}: unset CACHEWORK_QUEUE_TYPE "
            "or use RabbitMQ"
        )
    return value


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Read and check the `CACHEWORK_*` environment (or `env`)."""
    env = os.environ if env is None else env
    data_dir = Path(env.get("CACHEWORK_DATA_DIR", "").strip() or ".cachework").resolve()
    database_url = _database_url(env, data_dir)
    broker_url = _broker_url(env)
    log_level = _log_level(env)
    soft, hard = _task_time_limits(env)
    models = module_list(env, "CACHEWORK_MODELS", "") or (EXAMPLE_MODELS,)
    # The example app's cached tables and projects are defaults for the example app only:
    # loading them beside another app's models would map the demo's classes into it.
    example = EXAMPLE_MODELS in models
    return Settings(
        database_url=database_url,
        broker_url=broker_url,
        **_redis_and_sentinels(env, database_url, broker_url),
        models=models,
        data_dir=data_dir,
        log_level=log_level,
        task_soft_time_limit=soft,
        task_time_limit=hard,
        soft_shutdown_timeout=_soft_shutdown_timeout(env),
        soft_shutdown_on_idle=bool_value(env, "CACHEWORK_SOFT_SHUTDOWN_ON_IDLE", False),
        import_schedule=_import_schedule(env),
        sync_schedule=_sync_schedule(env),
        **_limits(env),
        log_format=_log_format(env),
        cached_tables=module_list(
            env, "CACHEWORK_CACHED_TABLES", "demo.cached_tables" if example else "off"
        ),
        projects=_projects(env, example),
        shared_broker=bool_value(env, "CACHEWORK_SHARED_BROKER", False),
        rebuild_on_change=bool_value(env, "CACHEWORK_REBUILD_ON_CHANGE", True),
        metrics_port=_metrics_port(env),
        metrics_bind=_metrics_bind(env),
        database_pooler=_database_pooler(env, database_url),
        queue_type=_queue_type(env, broker_url),
    )


def _log_level(env: Mapping[str, str]) -> str:
    log_level = env.get("CACHEWORK_LOG_LEVEL", "INFO").strip().upper() or "INFO"
    if log_level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ConfigError(
            f"CACHEWORK_LOG_LEVEL={log_level!r} is not one of DEBUG, INFO, WARNING, ERROR"
        )
    return log_level


def _task_time_limits(env: Mapping[str, str]) -> tuple[int, int]:
    """(soft, hard) task time limits; the hard one must come after the soft one."""
    soft = int_value(env, "CACHEWORK_TASK_SOFT_TIME_LIMIT", 600, minimum=1)
    hard = int_value(env, "CACHEWORK_TASK_TIME_LIMIT", soft + 60, minimum=1)
    if hard <= soft:
        raise ConfigError(
            f"CACHEWORK_TASK_TIME_LIMIT={hard} must be greater than "
            f"CACHEWORK_TASK_SOFT_TIME_LIMIT={soft}"
        )
    return soft, hard


def _redis_and_sentinels(env: Mapping[str, str], database_url: str, broker_url: str) -> dict:
    """The result backend, CACHEWORK_REDIS_URL and the Sentinel settings, as Settings
    fields: every sentinel:// URL (broker, results, Redis) needs the group's master name."""
    master = _master_name(env)
    sentinel_auth = (
        env.get("CACHEWORK_REDIS_SENTINEL_USERNAME", "").strip() or None,
        env.get("CACHEWORK_REDIS_SENTINEL_PASSWORD", "") or None,
    )
    result_backend = _result_backend(env, database_url)
    sentinel_options = _sentinel_options(master, *sentinel_auth)
    if scheme(broker_url) == "sentinel":
        _sentinel("CACHEWORK_BROKER_URL", broker_url, master)
    if scheme(result_backend) == "sentinel":
        _sentinel("CACHEWORK_RESULT_BACKEND", result_backend, master)
    return {
        "result_backend": result_backend,
        "redis_url": _redis_url(env, broker_url, master, sentinel_auth),
        "redis_master_name": master,
        "redis_sentinel_username": sentinel_auth[0],
        "redis_sentinel_password": sentinel_auth[1],
        "broker_transport_options": (sentinel_options if scheme(broker_url) == "sentinel" else {}),
        "result_backend_transport_options": (
            sentinel_options if scheme(result_backend) == "sentinel" else {}
        ),
    }


def _limits(env: Mapping[str, str]) -> dict:
    """The sizes, lifetimes and intervals, as Settings fields (each with its minimum)."""
    return {
        "cache_item_max_bytes": int_value(env, "CACHEWORK_CACHE_ITEM_MAX_BYTES", 1024 * 1024, 1),
        "cache_lock_ttl_ms": int_value(env, "CACHEWORK_CACHE_LOCK_TTL_MS", 60_000, 100),
        "stream_maxlen": int_value(env, "CACHEWORK_STREAM_MAXLEN", 100_000, 10),
        "listener_stale_after": float_value(env, "CACHEWORK_LISTENER_STALE_AFTER", 30.0, 0.1),
        "invalidation_max_keys": int_value(env, "CACHEWORK_INVALIDATION_MAX_KEYS", 10_000, 1),
        "broker_visibility_timeout": int_value(env, "CACHEWORK_BROKER_VISIBILITY_TIMEOUT", 600, 10),
        "broker_restore_interval": int_value(env, "CACHEWORK_BROKER_RESTORE_INTERVAL", 10, 1),
        "beat_lock_ttl": float_value(env, "CACHEWORK_BEAT_LOCK_TTL", 30.0, 1.0),
        "rebuild_delay": float_value(env, "CACHEWORK_REBUILD_DELAY", 1.0, 0.0),
        "rebuild_every": float_value(env, "CACHEWORK_REBUILD_EVERY", 5.0, 0.0),
        "rebuild_resend": float_value(env, "CACHEWORK_REBUILD_RESEND", 300.0, 1.0),
    }
