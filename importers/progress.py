"""The progress of one version import, gathered from the importer's events.

`import_versions(..., progress=callback)` calls back with plain dicts: first
`{"stage": "planned", "rows": {MODEL: live rows to check}}`, then per model
`{"model", "index", "total", "stage": "checking" | "counted" | "done", counts...}` (`total`:
the run's units); a large model also reports within itself, after each of its statements:
`{"model", ..., "stage": "checking", "part": k, "parts": n}` (its rows count as k/n done).
`RunProgress` keeps them as a whole: rows done of rows to check per model and overall,
percentage and ETA. Its `snapshot()` is JSON (a task's PROGRESS meta: a client that
polls it sees every model even when it missed events; Flower shows its top-level keys
`percent`, `done`, `total`, `eta_seconds`, `model`), `RunProgress.from_snapshot` reads
one back, and `line()` says it in one line for logs and non-terminal output.

The ETA is honest: none ("estimating") until at least ESTIMATE_FRACTION of the rows and
ESTIMATE_SECONDS have passed, then elapsed * todo / done. A small first model done in
no time said "22h" before: one that short is no rate to extrapolate from.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

COUNTS = ("created", "updated", "deleted", "unchanged", "skipped", "repaired")
CHECKED = ("counted", "done")  # a model's rows are checked once it reaches these stages
ESTIMATE_FRACTION = 0.05  # no ETA before this share of the rows is done ...
ESTIMATE_SECONDS = 2.0  # ... and this long has passed


def estimate(elapsed: float, done: float, total: float | None) -> float | None:
    """Seconds left at the rate so far, or None while that rate says too little: before
    ESTIMATE_FRACTION of `total` is `done` and ESTIMATE_SECONDS have passed."""
    if total is None or total <= 0 or done >= total:
        return None if total is None else 0.0
    if done < ESTIMATE_FRACTION * total or elapsed < ESTIMATE_SECONDS:
        return None
    return elapsed * (total - done) / done


class RunProgress:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.started = clock()
        self.models: dict[str, dict[str, Any]] = {}
        self.last: dict[str, Any] = {}
        self._elapsed: float | None = None  # set when read back from a snapshot

    def __call__(self, event: dict[str, Any]) -> None:
        self.last = dict(event)
        if event.get("stage") == "planned":
            for name, rows in (event.get("rows") or {}).items():
                self.models.setdefault(name, {"stage": "waiting", "done": 0})["rows"] = rows
            return
        name = event.get("model")
        if not name:
            return
        model = self.models.setdefault(name, {"stage": "waiting", "done": 0, "rows": None})
        model["stage"] = event.get("stage", model["stage"])
        model.update({k: event[k] for k in COUNTS if k in event})
        if model["stage"] in CHECKED:
            model["done"] = model.get("rows") or 0
        elif event.get("parts") and model.get("rows"):
            part = min(int(event.get("part") or 0), int(event["parts"]))
            share = model["rows"] * part // int(event["parts"])
            model["done"] = max(model.get("done") or 0, share)  # never backwards

    # --- totals ----------------------------------------------------------------------

    @property
    def rows(self) -> int | None:
        known = [m.get("rows") for m in self.models.values()]
        return sum(known) if known and all(r is not None for r in known) else None

    @property
    def done(self) -> int:
        return sum(m.get("done") or 0 for m in self.models.values())

    @property
    def elapsed(self) -> float:
        return self._elapsed if self._elapsed is not None else self.clock() - self.started

    @property
    def percent(self) -> float | None:
        rows = self.rows
        if rows is None:
            return None
        return 100.0 if rows == 0 else 100.0 * self.done / rows

    @property
    def eta(self) -> float | None:
        """Seconds left at the rate so far (None until it can be estimated: `estimate`)."""
        return estimate(self.elapsed, self.done, self.rows)

    @property
    def finished(self) -> bool:
        return bool(self.models) and all(m["stage"] == "done" for m in self.models.values())

    # --- output ----------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """JSON: the last event's fields, every model and the totals. What Flower shows
        (every top-level key of a `task-progress` event) reads on its own: `percent`,
        rows `done` of `total`, `eta_seconds` (None: still estimating) and the `model`
        at work; the last event's unit count is `units` here."""
        last = {k: v for k, v in self.last.items() if k not in ("rows", "total")}
        if "total" in self.last:
            last["units"] = self.last["total"]
        percent, eta = self.percent, self.eta
        return {
            **last,
            "models": {name: dict(m) for name, m in self.models.items()},
            "rows": self.rows,
            "done": self.done,
            "total": self.rows,
            "percent": None if percent is None else round(percent, 1),
            "elapsed": round(self.elapsed, 3),
            "eta_seconds": None if eta is None else round(eta),
            "model": self.last.get("model"),
        }

    @classmethod
    def from_snapshot(cls, meta: dict[str, Any]) -> RunProgress:
        run = cls()
        # Every model has a stage and rows done, even in a meta that is not a snapshot
        # (a final result's per-model counts): nothing reading `models` can miss them.
        run.models = {
            name: {"stage": "waiting", "done": 0, "rows": None, **m}
            for name, m in (meta.get("models") or {}).items()
            if isinstance(m, dict)
        }
        skip = ("models", "rows", "done", "total", "percent", "eta_seconds")
        run.last = {k: v for k, v in meta.items() if k not in skip}
        run._elapsed = float(meta.get("elapsed") or 0.0)
        return run

    def line(self) -> str:
        rows, done = self.rows, self.done
        checked = sum(1 for m in self.models.values() if m["stage"] in CHECKED)
        text = f"version import: {checked}/{len(self.models)} models checked"
        if rows is not None:
            text += f", {done:,}/{rows:,} rows ({self.percent:.0f}%)"
        if done < (rows or 0):
            eta = self.eta
            text += f", ETA {format_seconds(eta)}" if eta is not None else ", ETA estimating"
        each = [
            f"{name} {m['stage']}"
            + (f" {m.get('done') or 0:,}/{m['rows']:,}" if m.get("rows") is not None else "")
            for name, m in self.models.items()
        ]
        return text + (f"; {', '.join(each)}" if each else "")


def format_seconds(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


class Throttle:
    """True at most once per `every` seconds (the first call always)."""

    def __init__(self, every: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.every = every
        self.clock = clock
        self._last: float | None = None

    def __call__(self) -> bool:
        now = self.clock()
        if self._last is None or now - self._last >= self.every:
            self._last = now
            return True
        return False
