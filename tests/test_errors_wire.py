"""cachework's errors cross the wire by type (issue 22, item 7).

A failed task's result names its exception by module and class; a Celery client rebuilds
that class only from a module it has already imported, else it makes up a look-alike in
`celery.exceptions`. So every error class lives in `cachework.errors`, which imports
nothing heavy, and a plain client that imports only it catches cachework's errors by
type. Checked with a separate client process (celery and `cachework.errors`, nothing else
of cachework) against an in-process worker.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import cachework.errors as errors
from tests.conftest import make_env, settings_of

ROOT = Path(__file__).resolve().parent.parent
# Each call fails in the worker with the error named: (task, kwargs, class name).
FAILING = [
    ("cachework.ping", {"hold": 99}, "ValidationError"),  # the task's own check
    ("cachework.ping", {"hol": 1}, "ValidationError"),  # an argument it does not take
    ("cachework.ping", {"hold": "x" * 70_000}, "TooLargeError"),  # over 64 KiB of JSON
    ("cachework.lookup", {"table": "nope", "key": 1}, "NotFoundError"),  # not declared
]
# The modules that define or raise cachework's errors (their subclasses get imported).
ERROR_MODULES = (
    "cachework.cache.invalidation",
    "cachework.cache.items.sync",
    "cachework.cache.tables",
    "cachework.importers.versions",
    "cachework.worker.jobs",
)
# The client, as a web app writes it: celery, and cachework.errors when IMPORT is "1".
CLIENT = """
import json, sys
from celery import Celery

if sys.argv[3] == "1":
    import cachework.errors

broker, backend, calls = sys.argv[1], sys.argv[2], json.loads(sys.argv[4])
celery = Celery(broker=broker, backend=backend)
out = []
for name, kwargs in calls:
    try:
        celery.send_task(name, kwargs=kwargs).get(timeout=30, interval=0.05)
    except Exception as exc:
        caught = None
        if "cachework.errors" in sys.modules:
            e = sys.modules["cachework.errors"]
            try:
                raise exc
            except e.NotFoundError:
                caught = "NotFoundError"
            except e.TooLargeError:
                caught = "TooLargeError"
            except e.ValidationError:
                caught = "ValidationError"
            except e.CacheworkError:
                caught = "CacheworkError"
            except Exception:
                pass
        out.append({"module": type(exc).__module__, "type": type(exc).__name__,
                    "caught": caught, "message": str(exc)[:200]})
    else:
        out.append({"error": f"{name} did not fail"})
celery.close()
heavy = sorted(m for m in ("sqlalchemy", "cache", "worker", "tasks", "importers")
               if m in sys.modules and sys.argv[5] == "check")
print(json.dumps({"results": out, "heavy": heavy}))
"""


def run_client(broker: str, backend: str, import_errors: bool) -> dict:
    """The client process's output (it imports celery, and cachework.errors if told)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CACHEWORK_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    calls = [[name, kwargs] for name, kwargs, _ in FAILING]
    extra = [json.dumps(calls), "check"]
    done = subprocess.run(
        [sys.executable, "-c", CLIENT, broker, backend, "1" if import_errors else "0", *extra],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def _error_classes() -> list[type]:
    """Every CacheworkError subclass defined in a module of cachework's packages."""
    for name in ERROR_MODULES:
        importlib.import_module(name)
    found, todo = [], [errors.CacheworkError]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo.extend(cls.__subclasses__())
    ours = ("cache", "cachework", "worker", "tasks", "importers")
    return [c for c in found if c.__module__.split(".")[0] in ours]


# --- without services ---------------------------------------------------------------------------


def test_importing_the_errors_imports_nothing_heavy():
    code = (
        "import sys, cachework.errors\n"
        "heavy = [m for m in ('sqlalchemy', 'redis', 'celery', 'cache', 'worker') "
        "if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=30, cwd=ROOT)


def test_every_error_class_is_defined_in_cachework_errors():
    """A class defined elsewhere reaches a plain client as a made-up look-alike."""
    elsewhere = [
        f"{c.__module__}.{c.__qualname__}"
        for c in _error_classes()
        if c.__module__ != errors.__name__ or getattr(errors, c.__name__, None) is not c
    ]
    assert not elsewhere, f"define these in cachework/errors.py and import them: {elsewhere}"


def test_the_errors_rebuild_from_their_module_and_name_and_message():
    """What Celery stores (module, name, args) rebuilds the same class and message."""
    for cls in _error_classes():
        if cls.__module__ != errors.__name__:
            continue
        exc = cls("table='x' is not declared")
        rebuilt = getattr(sys.modules[type(exc).__module__], type(exc).__name__)(*exc.args)
        assert type(rebuilt) is cls and str(rebuilt) == str(exc)
        assert inspect.getmodule(cls) is errors


# --- a plain client across a real broker and result backend ---------------------------------


@pytest.fixture
def worker_app(tmp_path: Path, sqlite_url: str, redis_url: str, inprocess_worker):
    """An in-process worker on SQLite, Redis as broker and result backend."""
    from cachework.worker import create_app

    env = make_env(
        tmp_path, database_url=sqlite_url, broker_url=redis_url, result_backend=redis_url
    )
    app = create_app(settings_of(env))
    try:
        inprocess_worker(app)
        yield app
    finally:
        app.runtime.close()
        app.close()


def test_a_plain_client_catches_cachework_errors_by_type(worker_app, redis_url):
    out = run_client(redis_url, redis_url, import_errors=True)
    assert out["heavy"] == [], out["heavy"]  # celery (its redis backend), cachework.errors
    for (name, _kwargs, expected), result in zip(FAILING, out["results"], strict=True):
        assert result.get("caught") == expected, (name, result)
        assert result["module"] == "cachework.errors", (name, result)
        assert result["type"] == expected and result["message"], (name, result)
    assert "hold=99" in out["results"][0]["message"]
    assert "hol" in out["results"][1]["message"]


def test_without_the_import_a_client_gets_look_alikes(worker_app, redis_url):
    """Why the README says `import cachework.errors`: without it, Celery makes up classes."""
    out = run_client(redis_url, redis_url, import_errors=False)
    for (name, _kwargs, expected), result in zip(FAILING, out["results"], strict=True):
        assert (result["module"], result["type"], result["caught"]) == (
            "celery.exceptions",
            expected,
            None,
        ), (name, result)
