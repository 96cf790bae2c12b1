"""The keyed diff import framework and the SQLAlchemy-Continuum version importer.

Nothing here imports Celery, `tasks` or `worker`; callers pass in a Session.
"""
