"""Thin Celery tasks: parse arguments, open a session, call `importers/` or `cache/`.

Tasks are `shared_task`s registered under the contract's names, so every app made by
`worker.create_app` has them.
"""

from tasks import health  # noqa: F401
from tasks import invalidation  # noqa: F401
from tasks import project_cache  # noqa: F401
from tasks import tables  # noqa: F401
from tasks import versions  # noqa: F401
