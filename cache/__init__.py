"""The caches: cached tables (`cachework.cache.tables`), project cache items
(`cachework.cache.items`) and the
invalidation that keeps both fresh (`cachework.cache.invalidation`); usable from any process.

Nothing here imports Celery, `tasks` or `worker`; callers pass in a Session, Engine, Redis
client or runtime. Shared foundations (errors, settings, database, records, own tables,
migrations) are in `cachework`.
"""

from cachework import moves

moves.install()  # old paths of the modules that left cache/ keep working

from cachework.moves import alias_checkout_name  # noqa: E402

alias_checkout_name(__name__)  # a checkout's `import cache`: the same modules, not a copy
