"""Start-up checks that turn unreachable services into one clear line, within seconds."""

from __future__ import annotations

from typing import TYPE_CHECKING

from kombu import Connection

from cachework.errors import ConfigError, first_line
from cachework.settings import Settings, mask_url

if TYPE_CHECKING:  # imported when used: `cachework health` checks the broker without it
    import sqlalchemy as sa


def check_broker(settings: Settings, timeout: float = 3.0) -> None:
    """Connect to the broker once; ConfigError naming CACHEWORK_BROKER_URL if it fails."""
    options: dict = {"socket_connect_timeout": timeout, "socket_timeout": timeout}
    if settings.broker_url.startswith("filesystem"):
        options = {}
    elif settings.broker_transport_options.get("master_name"):  # sentinel://
        sentinels = dict(settings.broker_transport_options.get("sentinel_kwargs") or {})
        sentinels.update(socket_connect_timeout=timeout, socket_timeout=timeout)
        options.update(settings.broker_transport_options, sentinel_kwargs=sentinels)
    shown = mask_url(settings.broker_url)
    try:
        conn = Connection(
            settings.broker_url,
            transport=settings.broker_transport,
            connect_timeout=timeout,
            transport_options=options,
        )
    except Exception as exc:  # kombu refuses the URL itself (e.g. ?password=)
        raise ConfigError(
            f"CACHEWORK_BROKER_URL={shown!r} is not a URL the broker client accepts "
            f"({exc.__class__.__name__}); put the password in the user part, percent-encoded"
        ) from None
    try:
        conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=timeout)
    except Exception as exc:
        raise ConfigError(
            f"CACHEWORK_BROKER_URL={shown!r} cannot be reached: {mask_url(first_line(exc))}"
        ) from None
    finally:
        conn.release()


def check_database(engine: sa.Engine) -> None:
    """Run `SELECT 1`; ConfigError naming CACHEWORK_DATABASE_URL if it fails."""
    import sqlalchemy as sa

    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except Exception as exc:
        url = mask_url(engine.url.render_as_string(hide_password=True))
        raise ConfigError(
            f"CACHEWORK_DATABASE_URL={url!r} cannot be reached: {first_line(exc, 10_000)}"
        ) from None
