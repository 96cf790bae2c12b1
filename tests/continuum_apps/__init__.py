"""Apps in the style of SQLAlchemy-Continuum's documentation, one module per Continuum set-up.

Most app modules call `make_versioned` themselves (their own user class, plugins and
options) at the top, then define their models (many through `shapes.define()`).
Continuum's set-up is global to a process, so each app is loaded in a process of its own
(`tests/continuum_differential.py`, `tests/continuum_checks.py`).
"""
