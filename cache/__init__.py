"""The caches: cached tables (`cache.tables`), project cache items (`cache.items`) and the
invalidation that keeps both fresh (`cache.invalidation`); usable from any process.

Nothing here imports Celery, `tasks` or `worker`; callers pass in a Session, Engine, Redis
client or runtime. Shared foundations (errors, settings, database, records, own tables,
migrations) are in `cachework`.
"""

from cachework import moves

moves.install()  # old paths of the modules that left cache/ keep working
