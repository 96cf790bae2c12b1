"""Apps in the style of SQLAlchemy-Continuum's documentation, one module per Continuum set-up.

Each app module calls `make_versioned` itself (its own user class, plugins and options) at
the top, then defines its models through `shapes.define()`. Continuum's set-up is global
to a process, so each app is loaded in a process of its own (see `tests/continuum_run.py`).
"""
