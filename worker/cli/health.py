"""`health`: liveness and readiness, for probes and scripts.

`--liveness` and `--readiness` ask the deployment's services and workers (from any host).
`--live` and `--ready` ask this host's worker node, through its exporter
(CACHEWORK_METRICS_PORT): the exec probes of a Kubernetes pod, where liveness must depend
on the node alone. Imports stay inside the command (an exec probe starts a process every
time, and the kubelet waits 1 s by default).
"""

from __future__ import annotations

import gc
import sys

import click

from cachework.settings import Settings, load_settings
from cachework.worker.cli.params import timeout_option


@click.command()
@click.option(
    "--liveness",
    "mode",
    flag_value="liveness",
    help="Only the database, Redis and the broker answer (the services, from any host; "
    "not a Kubernetes liveness probe: use --live).",
)
@click.option(
    "--readiness",
    "mode",
    flag_value="readiness",
    default=True,
    help="Also a cachework worker answers and no worker child's invalidation listener is "
    "cut off longer than CACHEWORK_LISTENER_STALE_AFTER (default).",
)
@click.option(
    "--live",
    "mode",
    flag_value="live",
    help="This host's worker node runs (its exporter's /live; needs CACHEWORK_METRICS_PORT); "
    "depends on no service: the Kubernetes liveness probe.",
)
@click.option(
    "--ready",
    "mode",
    flag_value="ready",
    help="This host's worker node is ready (its exporter's /ready; needs "
    "CACHEWORK_METRICS_PORT): the Kubernetes readiness probe.",
)
@timeout_option(3.0, "Seconds to wait for the checks (they run in parallel).")
def health(mode: str, timeout: float) -> None:
    """Exit 0 with `ok`, or 1 with one line saying what is wrong."""
    # A probe's process lives a second and allocates little: no collections while it
    # imports, and none of its objects walked again when it exits (0.1 s each, measured).
    gc.disable()
    try:
        _health(mode, timeout)
    finally:
        gc.freeze()
        gc.enable()


def _health(mode: str, timeout: float) -> None:
    settings = load_settings()
    if mode in ("live", "ready"):
        problems = node_endpoint(settings, mode, timeout)
    elif mode == "liveness":
        from cachework.worker.health import liveness

        problems = liveness(settings, timeout)
    else:
        from cachework.worker.health import control_app, readiness

        app = control_app(settings)
        try:
            problems = readiness(settings, app, timeout)
        finally:
            app.close()
    if problems:
        click.echo(f"unhealthy ({mode}): {'; '.join(problems)}", err=True)
        sys.exit(1)
    click.echo(f"ok ({mode})")


def node_endpoint(settings: Settings, mode: str, timeout: float) -> list[str]:
    """GET this host's node exporter's `/live` or `/ready`: its problems (none: 200)."""
    import urllib.error
    import urllib.request

    from cachework.worker.probes import LIVE_PATH, READY_PATH

    if settings.metrics_port is None:
        return [
            f"--{mode} asks this host's worker node through its exporter: set "
            "CACHEWORK_METRICS_PORT (as the worker's)"
        ]
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(settings.metrics_bind, settings.metrics_bind)
    host = f"[{host}]" if ":" in host else host
    url = f"http://{host}:{settings.metrics_port}{LIVE_PATH if mode == 'live' else READY_PATH}"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            response.read()
        return []
    except urllib.error.HTTPError as exc:
        lines = exc.read().decode(errors="replace").strip().splitlines()
        return lines or [f"{url} answered {exc.code}"]
    except OSError as exc:
        reason = getattr(exc, "reason", exc)
        return [f"no worker node answers at {url}: {reason}"]


COMMANDS = [health]
