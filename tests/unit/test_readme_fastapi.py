"""The README prints the FastAPI example app (demo/fastapi_app.py) whole: the code a team
copies is the code `tests/test_fastapi_app.py` serves through uvicorn."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_readme_prints_the_tested_fastapi_app_as_it_is():
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("### asyncio apps (FastAPI, Starlette)") :]
    start = section.index("```python\n") + len("```python\n")
    printed = section[start : section.index("```\n", start)]
    assert printed == (ROOT / "demo" / "fastapi_app.py").read_text()
