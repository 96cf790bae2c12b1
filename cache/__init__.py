"""Project caches, cached tables and the invalidation bus: usable from any process.

Nothing here imports Celery, `tasks` or `worker`; callers pass in a Session, Engine or
Redis client.
"""
