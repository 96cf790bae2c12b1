"""A model module whose plugin misdeclares what its item reads: a worker must refuse to
start with one line (tests/test_data_driven.py)."""

from demo.models import Base  # noqa: F401 - bootstrap's model check

CACHE_PLUGINS = ["tests.data_driven_app:MisdeclaredPlugin"]
