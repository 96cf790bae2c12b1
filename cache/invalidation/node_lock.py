"""One outbox relay per node: an election by a non-blocking `flock` on a node-local file.

Every prefork child (and every web process started with a relay) used to poll the outbox
table five times a second; one poller per node is enough, since a commit relays its own
rows right after it commits (read-your-writes) and the polling relay only picks up what a
killed committer left behind. The file is named after a hash of the database and of the
log the rows go to (host, port, database, user, key: never a password), in the system's
temporary folder, so the processes of one node (one container) on one database and log
share it. The kernel releases the lock when its holder dies, so another process takes
over at its next attempt. A folder that cannot be written (a read-only file system) means
no election: every process relays, as before.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import tempfile
import weakref
from pathlib import Path

log = logging.getLogger(__name__)
_held: weakref.WeakSet[NodeLock] = weakref.WeakSet()


class NodeLock:
    """A lock file this process may hold; `acquire()` never blocks."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None
        self._warned = False

    @classmethod
    def for_relay(cls, *identity: object, folder: str | None = None) -> NodeLock:
        """The relay's lock for `identity` (database and log parts without secrets)."""
        digest = hashlib.sha256(repr(identity).encode()).hexdigest()[:20]
        return cls(Path(folder or tempfile.gettempdir()) / f"cachework-relay-{digest}.lock")

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> bool:
        """True if this process holds the lock now (it did already, or just took it).
        A lock file that cannot be opened counts as held: no election, relay anyway."""
        if self._fd is not None:
            return True
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            if not self._warned:
                log.warning("no outbox relay election (every process relays): %s", exc)
                self._warned = True
            return True
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self._fd = fd
        _held.add(self)
        return True

    def release(self) -> None:
        fd, self._fd = self._fd, None
        _held.discard(self)
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)

    def forget(self) -> None:
        """In a forked child: close the inherited descriptor (closing this copy leaves the
        parent's lock in place) so the child never holds the lock without relaying."""
        self.release()


def _forget_after_fork() -> None:
    for lock in list(_held):
        lock.forget()


os.register_at_fork(after_in_child=_forget_after_fork)
