"""Revisions of cachework's own tables, oldest first (Alembic reads them by path)."""
