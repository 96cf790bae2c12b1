"""The keyed diff import framework and the SQLAlchemy-Continuum version importer.

Nothing here imports Celery, `tasks` or `worker`; callers pass in a Session.
"""

from cachework.moves import alias_checkout_name

alias_checkout_name(__name__)  # a checkout's `import importers`: the same modules, not a copy
