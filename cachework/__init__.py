"""Shared foundations of cachework: errors, settings, the database, records, our own tables
and their migrations, the Redis client and its policy checks.

Every other package may import these; they import nothing of cachework's above them.
"""
