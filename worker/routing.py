"""Queue names and the contract's task routes (plain data: importing it reads no settings)."""

QUEUES = ("versions", "cache", "invalidations")
ROUTES = {
    "cachework.import_versions": "versions",
    "cachework.sync_cache": "cache",
    "cachework.sync_project_cache": "cache",
    "cachework.delete_cache": "cache",
    "cachework.lookup": "cache",
    "cachework.cache_status": "cache",
    "cachework.ping": "cache",
    "cachework.process_invalidation": "invalidations",
}
