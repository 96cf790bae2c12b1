"""Thin Celery tasks: parse arguments, open a session, call `importers/` or `cache/`.

Tasks are `shared_task`s registered under the contract's names, so every app made by
`worker.create_app` has them.
"""

from tasks import health, invalidation, project_cache, tables, versions  # noqa: F401
