"""The rebuild loop of project cache items.

`rebuild_scope` rebuilds one (project, app) scope under its lock: mark the requested names
dirty, try the lock (if another rebuild holds it, that one will see the dirty names and
do the work: this request is "deferred", not lost), then take the dirty names, run the
plugin in a fresh session, write its items, commit, and loop while names are dirty,
checking once more after releasing. A plugin that raises is reported in `errors` naming
the app and the project; its items are not written; other scopes carry on. A transient
database or Redis error is not a plugin failure: the names stay dirty and it propagates
(as `TransientError` through `cachework.worker.jobs`, which the tasks retry with backoff).

`session_factory` is a context manager factory that commits on success (e.g.
`Database.session`): each round is its own transaction, committed before the lock is
released.

A holder whose lock ran out while it was paused (SIGSTOP, swap, a long GC) may wake up
after another holder has written newer items: it must never write its older ones. So each
holder claims a fencing token right after taking the lock, and each round's write checks
it in the write's own transaction (`cachework.cache.items.locks.hold_fence`): a holder taken over
writes
nothing, its names go back to dirty and a LockLostError propagates (the task retries).

`project` is a canonical project key (`cachework.cache.items.projects.ProjectSource.check` makes
one and
lists them), or None for the site-wide items.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

from sqlalchemy.orm import Session

from cachework import instruments
from cachework.cache.items.locks import (
    ALL,
    LockBackend,
    RebuildLock,
    Renewer,
    claim_fence,
    hold_fence,
    scope_key,
)
from cachework.cache.items.plugins import CachePlugin, ItemWriter
from cachework.cache.items.store import DEFAULT_MAX_BYTES, set_items
from cachework.errors import LockLostError, first_line, is_transient

log = logging.getLogger(__name__)
SessionFactory = Callable[[], AbstractContextManager[Session]]
MAX_ROUNDS = 1_000  # a bound on one holder's loop; what is still dirty waits for the next run


@dataclass
class ScopeResult:
    updated: int = 0
    errors: list[str] = field(default_factory=list)
    deferred: bool = False
    rounds: int = 0

    def add(self, other: ScopeResult) -> None:
        """Fold in another plugin's result for the same scope: deferred if any was."""
        self.updated += other.updated
        self.errors.extend(other.errors)
        self.deferred = self.deferred or other.deferred
        self.rounds += other.rounds


def scope_label(project: str | None) -> str:
    return "site-wide items" if project is None else f"project {project}"


def _names_for(plugin: CachePlugin, names: set[str]) -> list[str | None] | None:
    """The `name` arguments to call the plugin with; None when nothing of it is asked."""
    if ALL in names:
        return [None]
    declared = getattr(plugin, "item_names", None)
    wanted = sorted(n for n in names if declared is None or n in declared)
    return wanted or None


def _round(
    session_factory: SessionFactory,
    plugin: CachePlugin,
    project: str | None,
    names: set[str],
    user: str | None,
    max_bytes: int,
    lock,
    abort_on: tuple[type[BaseException], ...] = (),
    fence: int | None = None,
) -> ScopeResult:
    """One round: the plugin computes, the framework writes and commits.

    Only the plugin's own exception is a plugin failure (reported, its items unwritten).
    A transient database or Redis error (the plugin's queries, the write or the commit),
    a lost or taken-over lock (`fence`: this holder's token, checked in the write's
    transaction), or an `abort_on` exception propagates with the names marked dirty
    again: nothing requested is dropped."""
    result = ScopeResult()
    calls = _names_for(plugin, names)
    if calls is None:
        return result
    writer = ItemWriter(plugin.app_name, project, user, max_bytes)
    try:
        with session_factory() as session:
            try:
                for name in calls:
                    plugin.update_cache(writer, session, project=project, name=name)
            except abort_on:
                raise
            except Exception as exc:
                if is_transient(exc):
                    raise
                session.rollback()
                log.exception(
                    "cache plugin %s failed for %s", plugin.app_name, scope_label(project)
                )
                result.errors.append(
                    f"{plugin.app_name} failed for {scope_label(project)}: "
                    f"{exc.__class__.__name__}: {first_line(exc, 500, named=False)}"
                )
                return result
            session.rollback()  # a plugin computes; only the framework writes
            if lock.lost:
                raise LockLostError(
                    f"the rebuild lock of {lock.key} expired before commit; left dirty for "
                    "the next holder"
                )
            if fence is not None:
                hold_fence(session, lock.key, fence)
            result.updated = set_items(session, writer.rows(), user=user, max_bytes=max_bytes)
    except BaseException:
        lock.mark_dirty(sorted(names))  # not done: the next rebuild of the scope redoes it
        raise
    return result


def _wait_for_holder(lock, ttl_ms: int) -> bool:
    """The lock is held by someone else: wait until it is clear the request will be
    done. Returns True when this caller got the lock (the holder died or finished),
    False when a live holder will do it (it took the names, or it renewed its lock).

    A holder killed mid-rebuild stops renewing, so its lock runs out within `ttl_ms`;
    then this request takes it and redoes what the dead holder took."""
    poll = min(0.25, max(ttl_ms / 20_000.0, 0.01))
    deadline = time.monotonic() + ttl_ms / 1000.0 * 1.5 + 1.0
    last = lock.remaining_ms()
    while time.monotonic() < deadline:
        if last is None and lock.acquire():
            return True
        time.sleep(poll)
        if not lock.is_dirty():
            return False  # the holder took the names: it rebuilds them
        if lock.acquire():
            return True
        left = lock.remaining_ms()
        if left is not None and last is not None and left > last:
            return False  # renewed (or newly taken): a live holder, which loops while dirty
        last = left
    log.warning("cache scope %s: the holder neither renewed nor released its lock", lock.key)
    return False


@dataclass(frozen=True)
class RunRound:
    """One scope's rounds as a callable: everything but the names and the fence is fixed."""

    session_factory: SessionFactory
    plugin: CachePlugin
    project: str | None
    user: str | None
    max_bytes: int
    lock: RebuildLock
    abort_on: tuple[type[BaseException], ...]

    def claim_fence(self, key: str) -> int:
        with self.session_factory() as session:
            return claim_fence(session, key)

    def __call__(self, names: set[str], fence: int) -> ScopeResult:
        started = time.perf_counter()
        done = _round(
            self.session_factory,
            self.plugin,
            self.project,
            names,
            self.user,
            self.max_bytes,
            self.lock,
            self.abort_on,
            fence,
        )
        seconds = time.perf_counter() - started
        instruments.record_rebuild(self.plugin.app_name, seconds, done.errors)
        return done


def _rounds_while_held(
    lock: RebuildLock, ttl_ms: int, max_rounds: int, result: ScopeResult, run_round: RunRound
) -> None:
    """Holding `lock` (renewed meanwhile), run rounds into `result` until no name is dirty
    or `max_rounds` is reached; each round's writes carry this holder's fencing token."""
    fence = run_round.claim_fence(lock.key)
    with Renewer(lock, ttl_ms):
        while result.rounds < max_rounds:
            pending = lock.take_dirty()
            if not pending:
                return
            result.rounds += 1
            result.add(run_round(pending, fence))
            lock.finish()


def rebuild_scope(
    session_factory: SessionFactory,
    locks: LockBackend,
    plugin: CachePlugin,
    project: str | None,
    names: list[str] | None = None,
    user: str | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_rounds: int = MAX_ROUNDS,
    abort_on: tuple[type[BaseException], ...] = (),
    see_through: bool = False,
) -> ScopeResult:
    """Rebuild `names` (None: all items) of one plugin for one scope, never twice at once.

    A plugin's exception is reported in the result. Those of `abort_on` (e.g. the
    caller's time limit), transient database or Redis errors and a lost lock put the
    round's names back to dirty and propagate (the caller retries). A request that finds
    the lock held returns "deferred" only once a live holder has its names; a dead
    holder's lock is waited out and its work redone here.

    `see_through`: never defer, wait for the holder to finish or die instead. For a
    message the broker delivered again: on a Redis broker a second delivery of a job
    still running shares its delivery tag, so acknowledging a deferred second delivery
    also drops the broker's record of the first; should the holder then die, nothing
    would redo its names."""
    lock = locks.lock(scope_key(project, plugin.app_name))
    lock.mark_dirty(names)
    run_round = RunRound(session_factory, plugin, project, user, max_bytes, lock, abort_on)
    result = ScopeResult()
    waited = False
    while result.rounds < max_rounds:
        if not lock.acquire():
            if not waited:
                instruments.record_lock_wait(plugin.app_name)
                waited = True
            if not _wait_for_holder(lock, locks.ttl_ms):
                if see_through:
                    continue  # a live holder: wait on until it releases or its lock runs out
                result.deferred = result.rounds == 0
                if result.deferred:
                    instruments.record_deferral(plugin.app_name)
                return result
        try:
            _rounds_while_held(lock, locks.ttl_ms, max_rounds, result, run_round)
        finally:
            lock.release()
        # A request that marked dirty after our last take but before the release could not
        # get the lock: check once more, now that it is free.
        if not lock.is_dirty():
            return result
    log.warning("cache scope %s still dirty after %d rounds", lock.key, max_rounds)
    return result


def rebuild(
    session_factory: SessionFactory,
    locks: LockBackend,
    plugins: list[CachePlugin],
    project: str | None,
    names: list[str] | None = None,
    user: str | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    abort_on: tuple[type[BaseException], ...] = (),
    see_through: bool = False,
) -> ScopeResult:
    """Rebuild one scope (a project, or the site-wide items) for each plugin in turn."""
    total = ScopeResult()
    for plugin in plugins:
        total.add(
            rebuild_scope(
                session_factory,
                locks,
                plugin,
                project,
                names,
                user,
                max_bytes,
                abort_on=abort_on,
                see_through=see_through,
            )
        )
    return total
