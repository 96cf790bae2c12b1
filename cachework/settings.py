"""The one place that reads the `CACHEWORK_*` environment.

`load_settings()` turns the environment into a frozen `Settings`, filling the embedded
defaults (a SQLite file, kombu's `filesystem://` broker in `.cachework/`, results in the
database) and checking every value up front, so a typo fails at start-up with a message that
names the variable and the value instead of a traceback deep inside a task.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit

from cachework.errors import ConfigError
from cachework.pooler import parse_pooler, prepare_threshold

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
# A Redis server, or the master of a Sentinel group (cachework/redis_client.py).
REDIS_SCHEMES = ("redis", "rediss", "sentinel")
EXAMPLE_MODELS = "demo.models"
OFF = ("", "off", "none", "false", "0", "no")


_SECRET_PARAMS = re.compile(
    r"(?i)([?&;](?:password|passwd|pass|pwd|secret|token|sslpassword|sslkey|api_key"
    r"|sentinel_password"
    r"|accountkey|sharedaccesskey|sig)=)[^&;#]*"
)
QUOTING_HINT = (
    "percent-encode the user and password (Python: urllib.parse.quote(password, safe='')), "
    "e.g. '#' -> %23, '?' -> %3F, '/' -> %2F, '@' -> %40, ';' -> %3B"
)
# Where a URL starts in a text: a failover list (`amqp://h1//;amqp://h2//`) or a message.
_URL_START = re.compile(r"(?<![\w+.-])(?=[A-Za-z][\w+.-]*://)")
_HOST_PORT = re.compile(r"(?:[\w.~%-]*|\[[0-9A-Fa-f:.]+\])(?::\d*)?")
# An '@' in a query or fragment that is not in a key=value pair (`?x@h`, unlike `?user=a@b`).
_BARE_AT = re.compile(r"[?#&;][^?#&;=@]*@")


def _cut(rest: str, start: int = 0) -> int:
    """Index of the first '/', '?' or '#' in `rest` from `start` (where a parser ends the
    authority, or the path); len(rest) if none."""
    return min((i for i in (rest.find(c, start) for c in "/?#") if i >= 0), default=len(rest))


def _unparseable_userinfo(url: str) -> bool:
    """True when a password holds '/', '?' or '#' unquoted: parsers end the authority inside
    it and read the rest ('...@host') as path or query. An '@' past that end betrays it, in
    the path always, in a query or fragment unless a plain host[:port] precedes and the '@'
    sits in a key=value pair (`?user=a@b`). No authority (`sqlite:////a@b.db`): a path."""
    _scheme, sep, rest = url.partition("://")
    cut = _cut(rest)
    head, tail = rest[:cut], rest[cut:]
    if not sep or not head or "@" not in tail:
        return False
    query = _cut(tail, 1) if tail[0] == "/" else 0
    if "@" in tail[:query]:
        return True
    host = head.rpartition("@")[2]
    return not _HOST_PORT.fullmatch(host) or bool(_BARE_AT.search(tail[query:]))


def _mask_one(url: str) -> str:
    """`url` (one URL, maybe followed by text) with the password of its user part hidden."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    if _unparseable_userinfo(url):  # the password may run up to the last '@': hide that all
        userinfo, _, after = rest.rpartition("@")
        user, colon, _pw = userinfo.partition(":")
        return f"{scheme}://{user + colon if colon else ''}***@{after}"
    cut = _cut(rest)
    userinfo, _, host = rest[:cut].rpartition("@")
    user, colon, _pw = userinfo.partition(":")
    return f"{scheme}://{user}:***@{host}{rest[cut:]}" if colon else url


def mask_url(url: str) -> str:
    """Return `url` with every credential replaced by `***`, safe to print or log: the
    password of the user part (even one with unquoted '/', '?', '#' or '@') of each URL in
    it (a failover list, an error message), and query parameters such as `?password=`."""
    if not isinstance(url, str):
        return "***"
    masked = "".join(_mask_one(part) for part in _URL_START.split(url))
    return _SECRET_PARAMS.sub(r"\1***", masked)


def _unparseable(part: str) -> bool:
    """True when one URL of a `;`-separated list has a user part no parser reads as written
    (or is a piece of a password split at a ';' in it: `user:pa;ss@host`)."""
    if "://" not in part:
        return "@" in part
    if _unparseable_userinfo(part):
        return True
    try:
        urlsplit(part).port  # noqa: B018 - raises on a password read as a port
    except ValueError:
        return True
    return False


def check_url(name: str, raw: str) -> None:
    """ConfigError (URLs masked, with how to quote) for a URL, or any URL of a failover list
    (split at each ';' as kombu does), whose user part no parser reads as written."""
    if any(_unparseable(part) for part in raw.split(";")):
        raise ConfigError(
            f"{name}={mask_url(raw)!r} cannot be parsed: its user or password holds a "
            f"character with a meaning in URLs; {QUOTING_HINT}"
        )


@dataclass(frozen=True)
class Settings:
    """Typed, validated configuration. Times are in seconds unless the name says otherwise."""

    database_url: str
    broker_url: str
    result_backend: str
    redis_url: str | None
    models: tuple[str, ...]
    data_dir: Path
    log_level: str = "INFO"
    task_soft_time_limit: int = 600
    task_time_limit: int = 660
    # Celery's soft shutdown (5.5+): on a cold shutdown (SIGQUIT, or SIGTERM when the
    # environment has REMAP_SIGTERM=SIGQUIT, as deploy/kubernetes does) running tasks get
    # this many seconds to finish before they are cancelled and requeued (acks late); 0:
    # off. `soft_shutdown_on_idle`: wait even with no task running (a Redis broker's
    # ETA/countdown tasks held by the worker are then restored). README "Kubernetes".
    soft_shutdown_timeout: float = 0.0
    soft_shutdown_on_idle: bool = False
    # Beat schedule: a five-field crontab for the nightly version import, seconds for the
    # cache sync; either may be None (off).
    import_schedule: str | None = "0 3 * * *"
    sync_schedule: float | None = 3600.0
    cache_item_max_bytes: int = 1024 * 1024
    cache_lock_ttl_ms: int = 60_000
    stream_maxlen: int = 100_000
    listener_stale_after: float = 30.0
    invalidation_max_keys: int = 10_000
    cached_tables: tuple[str, ...] = ("demo.cached_tables",)
    # The app's projects: (table or schema.table, key column, key type or None = inferred
    # from the model's column); None when CACHEWORK_PROJECTS=off. See cache/items/projects.py.
    projects: tuple[str, str, str | None] | None = ("projects", "uuid", "uuid")
    broker_transport_options: dict = field(default_factory=dict)
    # Redis broker: seconds before a message taken by a worker that died (and never
    # acknowledged it) is handed out again. A job still running past it gets a second
    # delivery, which its lock makes harmless (see README "Reliability").
    broker_visibility_timeout: int = 600
    # Redis broker: seconds between the transport's sweeps that hand such messages out
    # again (kombu's `unacked_restore_interval`, scanning on every sweep): a message
    # comes back within the visibility timeout plus this.
    broker_restore_interval: int = 10
    # Seconds a dead beat's lock outlives it (several beats: the standby takes over after
    # it; see worker/beat.py).
    beat_lock_ttl: float = 30.0
    log_format: str = "text"  # or "json": one JSON object per line
    # The broker is shared with the app's own Celery workers: cachework workers then leave
    # Celery's default queue `celery` to them (see worker/routing.py).
    shared_broker: bool = False
    # Prometheus metrics and the readiness endpoint of each worker node (None: not served),
    # bound to `metrics_bind` (loopback by default). See worker/metrics.py.
    metrics_port: int | None = None
    metrics_bind: str = "127.0.0.1"
    # Redis Sentinel (every sentinel:// URL: broker, result backend, CACHEWORK_REDIS_URL):
    # the group's master name and the sentinels' own credentials (cachework/redis_client.py).
    redis_master_name: str | None = None
    redis_sentinel_username: str | None = field(default=None, repr=False)
    redis_sentinel_password: str | None = field(default=None, repr=False)
    # Celery's result_backend_transport_options (a sentinel:// result backend's master).
    result_backend_transport_options: dict = field(default_factory=dict)
    # How a pooler in front of the database shares server connections: none, session or
    # transaction (no server-side prepared statements). See cachework/pooler.py.
    database_pooler: str = "none"
    # RabbitMQ: the type of every queue cachework declares, classic or quorum (replicated;
    # retries' countdowns through RabbitMQ's native delayed delivery). See celeryconfig.
    queue_type: str = "classic"

    @property
    def broker_transport(self) -> str | None:
        """kombu transport class for the broker (None: chosen by the URL's scheme)."""
        if self.broker_url.startswith("filesystem"):
            return "worker.fs_transport:Transport"
        if _scheme(self.broker_url) in ("redis", "rediss"):
            # A master demoted by a failover is a lost connection, not a fatal error.
            return "worker.redis_transport:Transport"
        if _scheme(self.broker_url) == "sentinel":
            return "worker.redis_transport:SentinelTransport"
        return None

    @property
    def broker_folder(self) -> Path:
        return self.data_dir / "broker"

    @property
    def broker_redis_url(self) -> str | None:
        """The Redis broker as a URL for cachework's own client (a sentinel:// broker
        with the master name and sentinel credentials in its query); None: not Redis."""
        if _scheme(self.broker_url) not in REDIS_SCHEMES:
            return None
        return sentinel_client_url(
            self.broker_url,
            self.redis_master_name,
            self.redis_sentinel_username,
            self.redis_sentinel_password,
        )


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not an integer") from None
    if value < minimum:
        raise ConfigError(f"{name}={raw!r} must be at least {minimum}")
    return value


def _float(env: Mapping[str, str], name: str, default: float, minimum: float = 0.0) -> float:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number") from None
    if value < minimum:
        raise ConfigError(f"{name}={raw!r} must be at least {minimum}")
    return value


def _soft_shutdown_timeout(env: Mapping[str, str]) -> float:
    """CACHEWORK_SOFT_SHUTDOWN_TIMEOUT: finite seconds, 0 or `off` for none (an infinite
    wait would outlive any terminationGracePeriodSeconds and end in SIGKILL)."""
    name = "CACHEWORK_SOFT_SHUTDOWN_TIMEOUT"
    raw = env.get(name, "")
    if raw.strip().lower() in ("", "off"):
        return 0.0
    value = _float(env, name, 0.0)
    if not math.isfinite(value):
        raise ConfigError(f"{name}={raw!r} is not a finite number of seconds (or off)")
    return value


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name}={raw!r} is not a boolean; use 1, true, yes, on or 0, false, no, off")


def _scheme(url: str) -> str:
    return url.split("://", 1)[0].lower() if "://" in url else ""


def _database_url(env: Mapping[str, str], data_dir: Path) -> str:
    raw = env.get("CACHEWORK_DATABASE_URL", "").strip()
    if not raw:
        return f"sqlite:///{(data_dir / 'cachework.db').as_posix()}"
    scheme = _scheme(raw)
    if scheme not in DATABASE_SCHEMES:
        valid = ", ".join(sorted({s.split("+")[0] + "://" for s in DATABASE_SCHEMES}))
        raise ConfigError(
            f"CACHEWORK_DATABASE_URL={mask_url(raw)!r} has unknown scheme {scheme!r}; "
            f"use one of {valid}"
        )
    check_url("CACHEWORK_DATABASE_URL", raw)
    return DATABASE_SCHEMES[scheme] + raw[len(scheme) :]


def _broker_url(env: Mapping[str, str]) -> str:
    raw = env.get("CACHEWORK_BROKER_URL", "").strip() or "filesystem://"
    scheme = _scheme(raw)
    if scheme not in BROKER_SCHEMES:
        raise ConfigError(
            f"CACHEWORK_BROKER_URL={mask_url(raw)!r} has unknown scheme {scheme!r}; "
            f"use one of {', '.join(s + '://' for s in BROKER_SCHEMES)}"
        )
    check_url("CACHEWORK_BROKER_URL", raw)
    return raw


def _result_backend(env: Mapping[str, str], database_url: str) -> str:
    raw = env.get("CACHEWORK_RESULT_BACKEND", "").strip()
    if not raw:
        return "db+" + database_url
    # Celery's own rule (celery.app.backends.by_url): the scheme, or what precedes its "+".
    name = _scheme(raw).split("+", 1)[0] if "://" in raw else raw
    if name not in RESULT_BACKENDS and not (":" in name and "://" not in raw):
        raise ConfigError(
            f"CACHEWORK_RESULT_BACKEND={mask_url(raw)!r} names unknown result backend "
            f"{name!r}; use e.g. db+postgresql://..., redis://..., rpc:// or disabled"
        )
    check_url("CACHEWORK_RESULT_BACKEND", raw)
    return raw


def sentinel_client_url(
    url: str, master_name: str | None, username: str | None, password: str | None
) -> str:
    """`url` as cachework/redis_client.py reads it: a sentinel:// URL gets the master name and
    the sentinels' credentials in its query unless it names them itself; others as is."""
    if _scheme(url) != "sentinel":
        return url
    extra = {
        "master_name": master_name,
        "sentinel_username": username,
        "sentinel_password": password,
    }
    given = {k for part in url.split(";") for k, _v in parse_qsl(urlsplit(part).query)}
    pairs = [(k, v) for k, v in extra.items() if v and k not in given]
    if not pairs:
        return url
    return f"{url}{'&' if '?' in url.rsplit(';', 1)[-1] else '?'}{urlencode(pairs)}"


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
        if parts is None or _scheme(part) != "sentinel" or not parts.hostname:
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
        if _scheme(raw) not in REDIS_SCHEMES:
            raise ConfigError(
                f"CACHEWORK_REDIS_URL={mask_url(raw)!r} is not a redis://, rediss:// or "
                "sentinel:// URL"
            )
        check_url("CACHEWORK_REDIS_URL", raw)
        if _scheme(raw) == "sentinel":
            _sentinel("CACHEWORK_REDIS_URL", raw, master, in_query=True)
        return sentinel_client_url(raw, master, *sentinel_auth)
    if _scheme(broker_url) not in REDIS_SCHEMES:
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
    return _float(env, "CACHEWORK_SYNC_SCHEDULE", 3600.0, minimum=1.0)


def _modules(env: Mapping[str, str], name: str, default: str) -> tuple[str, ...]:
    raw = env.get(name)
    if raw is None:
        raw = default
    if raw.strip().lower() in ("off", "none"):
        return ()
    modules = tuple(m.strip() for m in raw.split(",") if m.strip())
    for module in modules:
        if not all(part.isidentifier() for part in module.split(".")):
            raise ConfigError(f"{name} has {module!r}, which is not a module path")
    return modules


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
    if value == "quorum" and _scheme(broker_url) not in AMQP_SCHEMES:
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
    log_level = env.get("CACHEWORK_LOG_LEVEL", "INFO").strip().upper() or "INFO"
    if log_level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ConfigError(
            f"CACHEWORK_LOG_LEVEL={log_level!r} is not one of DEBUG, INFO, WARNING, ERROR"
        )
    soft = _int(env, "CACHEWORK_TASK_SOFT_TIME_LIMIT", 600, minimum=1)
    hard = _int(env, "CACHEWORK_TASK_TIME_LIMIT", soft + 60, minimum=1)
    if hard <= soft:
        raise ConfigError(
            f"CACHEWORK_TASK_TIME_LIMIT={hard} must be greater than "
            f"CACHEWORK_TASK_SOFT_TIME_LIMIT={soft}"
        )
    models = _modules(env, "CACHEWORK_MODELS", "") or (EXAMPLE_MODELS,)
    # The example app's cached tables and projects are defaults for the example app only:
    # loading them beside another app's models would map the demo's classes into it.
    example = EXAMPLE_MODELS in models
    master = _master_name(env)
    sentinel_auth = (
        env.get("CACHEWORK_REDIS_SENTINEL_USERNAME", "").strip() or None,
        env.get("CACHEWORK_REDIS_SENTINEL_PASSWORD", "") or None,
    )
    result_backend = _result_backend(env, database_url)
    sentinel_options = _sentinel_options(master, *sentinel_auth)
    if _scheme(broker_url) == "sentinel":
        _sentinel("CACHEWORK_BROKER_URL", broker_url, master)
    if _scheme(result_backend) == "sentinel":
        _sentinel("CACHEWORK_RESULT_BACKEND", result_backend, master)
    return Settings(
        database_url=database_url,
        broker_url=broker_url,
        result_backend=result_backend,
        redis_url=_redis_url(env, broker_url, master, sentinel_auth),
        redis_master_name=master,
        redis_sentinel_username=sentinel_auth[0],
        redis_sentinel_password=sentinel_auth[1],
        broker_transport_options=(sentinel_options if _scheme(broker_url) == "sentinel" else {}),
        result_backend_transport_options=(
            sentinel_options if _scheme(result_backend) == "sentinel" else {}
        ),
        models=models,
        data_dir=data_dir,
        log_level=log_level,
        task_soft_time_limit=soft,
        task_time_limit=hard,
        soft_shutdown_timeout=_soft_shutdown_timeout(env),
        soft_shutdown_on_idle=_bool(env, "CACHEWORK_SOFT_SHUTDOWN_ON_IDLE", False),
        import_schedule=_import_schedule(env),
        sync_schedule=_sync_schedule(env),
        cache_item_max_bytes=_int(env, "CACHEWORK_CACHE_ITEM_MAX_BYTES", 1024 * 1024, 1),
        cache_lock_ttl_ms=_int(env, "CACHEWORK_CACHE_LOCK_TTL_MS", 60_000, 100),
        stream_maxlen=_int(env, "CACHEWORK_STREAM_MAXLEN", 100_000, 10),
        listener_stale_after=_float(env, "CACHEWORK_LISTENER_STALE_AFTER", 30.0, 0.1),
        invalidation_max_keys=_int(env, "CACHEWORK_INVALIDATION_MAX_KEYS", 10_000, 1),
        broker_visibility_timeout=_int(env, "CACHEWORK_BROKER_VISIBILITY_TIMEOUT", 600, 10),
        broker_restore_interval=_int(env, "CACHEWORK_BROKER_RESTORE_INTERVAL", 10, 1),
        beat_lock_ttl=_float(env, "CACHEWORK_BEAT_LOCK_TTL", 30.0, 1.0),
        log_format=_log_format(env),
        cached_tables=_modules(
            env, "CACHEWORK_CACHED_TABLES", "demo.cached_tables" if example else "off"
        ),
        projects=_projects(env, example),
        shared_broker=_bool(env, "CACHEWORK_SHARED_BROKER", False),
        metrics_port=_metrics_port(env),
        metrics_bind=_metrics_bind(env),
        database_pooler=_database_pooler(env, database_url),
        queue_type=_queue_type(env, broker_url),
    )
