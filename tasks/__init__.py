"""Thin Celery tasks: parse arguments, open a session, call `importers/` or `cache/`.

Tasks are `shared_task`s registered under the contract's names, so every app made by
`worker.create_app` has them.
"""

from cachework.moves import alias_checkout_name
from cachework.tasks import health, invalidation, project_cache, tables, versions  # noqa: F401

alias_checkout_name(__name__)  # a checkout's `import tasks`: the same modules, not a copy
