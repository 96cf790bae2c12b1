"""The typed settings object: every value checked, times in seconds unless the name says
otherwise. `cachework.settings.load_settings()` builds it from the environment, checking
each value on the way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from cachework.urls import REDIS_SCHEMES, scheme, sentinel_client_url


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
    # cache sync; either may be None (off). The full sync is the safety net of data-driven
    # rebuilds (cache/items/reads.py), so it runs daily by default.
    import_schedule: str | None = "0 3 * * *"
    sync_schedule: float | None = 86_400.0
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
    # Data-driven rebuilds (cache/items/changes.py): seconds from a change to its rebuild
    # (a burst within it is one rebuild), the least seconds between two rebuilds of an item
    # while changes keep coming, and after how long a rebuild sent but never reported
    # done is sent again.
    rebuild_on_change: bool = True  # off: plugins' `depends_on` are not followed
    rebuild_delay: float = 1.0
    rebuild_every: float = 5.0
    rebuild_resend: float = 300.0
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
            return "cachework.worker.fs_transport:Transport"
        if scheme(self.broker_url) in ("redis", "rediss"):
            # A master demoted by a failover is a lost connection, not a fatal error.
            return "cachework.worker.redis_transport:Transport"
        if scheme(self.broker_url) == "sentinel":
            return "cachework.worker.redis_transport:SentinelTransport"
        return None

    @property
    def broker_folder(self) -> Path:
        return self.data_dir / "broker"

    @property
    def broker_redis_url(self) -> str | None:
        """The Redis broker as a URL for cachework's own client (a sentinel:// broker
        with the master name and sentinel credentials in its query); None: not Redis."""
        if scheme(self.broker_url) not in REDIS_SCHEMES:
            return None
        return sentinel_client_url(
            self.broker_url,
            self.redis_master_name,
            self.redis_sentinel_username,
            self.redis_sentinel_password,
        )
