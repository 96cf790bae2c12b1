"""The one exception tree of cachework.

Every error a task, the CLI or the library raises on purpose is a `CacheworkError`.
`TransientError` means "try again later" (tasks retry it with backoff); `PermanentError`
means the input or configuration is wrong and retrying cannot help. Messages name the bad
value and, where there is a short list, the valid ones.
"""

from __future__ import annotations


class CacheworkError(Exception):
    """Root of every error cachework raises on purpose."""


class TransientError(CacheworkError):
    """A temporary condition (lost connection, lock held, deadlock): retrying may succeed."""


class PermanentError(CacheworkError):
    """Retrying cannot help: bad input, bad configuration, a broken invariant."""


class ConfigError(PermanentError):
    """A setting is missing or malformed; the message names the variable and the value."""


class ValidationError(PermanentError):
    """A task argument or API input is malformed; the message names the field and value."""


class NotFoundError(PermanentError):
    """A named thing (model, project, app, table) does not exist; the message lists valid names."""


class LockedError(TransientError):
    """Another job holds the lock this job needs."""
