"""The README's FastAPI app (demo/fastapi_app.py, issue 21) as deployed: a real uvicorn
process on the run's PostgreSQL, with the log in the run's own Redis or in the database,
driven over real HTTP.

Its own writes (a tracked AsyncSession on asyncpg) are read back at once by its next
request; a write committed by another process reaches it through its listener; project
items come from the cache table; the loop keeps answering while a cached table
refreshes; a rolled-back write publishes nothing; SIGTERM runs the lifespan's shutdown
and leaves no outbox row behind.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import httpx
import pytest
import sqlalchemy as sa

from cachework.cache.invalidation import publish
from cachework.cache.items.store import set_items
from cachework.worker.runtime import Runtime
from demo.models import Category
from demo.seed import project_uuid
from tests.conftest import make_env, settings_of
from tests.fastapi_helpers import Uvicorn
from tests.invalidation_helpers import outbox_count, wait_until

ROUNDS = 20
PROJECT = project_uuid(0)
SUMMARY = {"products": 4, "active": 3, "total_value": "12.50"}
BY_CATEGORY = {"tools": 3, "garden": 1}


@pytest.fixture(params=["redis", "database"])
def served(request, pg_database, tmp_path) -> Iterator[dict]:
    """Seeded categories and project items, the app serving them, and a runtime of the
    test's own (another process's view: its log, never started)."""
    with pg_database.session() as session:
        session.add_all(Category(id=i, code=f"c{i}", name=f"n{i}") for i in (1, 2, 3))
    with pg_database.session() as session:
        set_items(
            session,
            [
                {"project": PROJECT, "app_name": "inventory", "name": "summary", "data": SUMMARY},
                {"project": PROJECT, "app_name": "inventory", "name": "by_category",
                 "data": BY_CATEGORY},
                {"project": PROJECT, "app_name": "other", "name": "summary", "data": {}},
            ],
        )  # fmt: skip
    redis_url = request.getfixturevalue("redis_url") if request.param == "redis" else "off"
    url = pg_database.engine.url.render_as_string(hide_password=False)
    env = make_env(tmp_path, database_url=url, redis_url=redis_url)
    server = Uvicorn("demo.fastapi_app:app", env, tmp_path / "uvicorn")
    elsewhere = Runtime(settings_of(env))
    try:
        server.start()
        with httpx.Client(base_url=server.url, timeout=10.0) as client:
            yield {"server": server, "client": client, "elsewhere": elsewhere}
    finally:
        clean = server.stopped_cleanly()
        elsewhere.close()
        assert clean, server.stderr()[-3000:]


def name_of(client: httpx.Client, key: int) -> str:
    answer = client.get(f"/categories/{key}")
    assert answer.status_code == 200, answer.text
    return answer.json()["name"]


def test_the_fastapi_app_reads_its_writes_sees_others_and_never_blocks(served, pg_database):
    client, server, elsewhere = served["client"], served["server"], served["elsewhere"]
    log = elsewhere.invalidation_log()

    # The cached table, loaded on first read; a key it does not hold is a 404.
    assert [name_of(client, key) for key in (1, 2, 3)] == ["n1", "n2", "n3"]
    assert client.get("/categories/99").status_code == 404

    # Read-your-writes in the writer's process: each PUT's next GET has the new name.
    stale = 0
    for i in range(ROUNDS):
        answer = client.put("/categories/1", json={"name": f"put{i}"})
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"id": 1, "code": "c1", "name": f"put{i}"}
        stale += name_of(client, 1) != f"put{i}"
    assert stale == 0
    assert client.put("/categories/99", json={"name": "x"}).status_code == 404

    # Another process's write: a plain commit, then its event in the log; the app's
    # listener applies it (bounded wait).
    with pg_database.session() as session:
        session.execute(sa.text("UPDATE categories SET name = 'elsewhere' WHERE id = 2"))
    publish("categories", [2], log=log)
    assert wait_until(lambda: name_of(client, 2) == "elsewhere", timeout=20, every=0.05)

    # Project items from the cache table: this app's only; an unknown project has none.
    items = client.get(f"/projects/{PROJECT}/items").json()
    assert {name: item["data"] for name, item in items.items()} == {
        "by_category": BY_CATEGORY,
        "summary": SUMMARY,
    }
    assert all("T" in item["updated_at"] for item in items.values())  # ISO 8601
    assert client.get(f"/projects/{project_uuid(7)}/items").json() == {}

    # The loop answers while the table refreshes (each PUT invalidates it here).
    slowest = asyncio.run(pings_during_refreshes(server.url))
    assert slowest < 1.0, f"/ping took {slowest:.2f}s while categories refreshed"

    # A write the database refuses (name over 200 characters) rolls back: no event.
    # (Its own connection: uvicorn closes the one an unhandled error came through.)
    assert "ERROR" not in server.stderr()  # nothing failed in the app so far
    engine = pg_database.engine
    assert wait_until(lambda: outbox_count(engine) == 0, timeout=20, every=0.05)
    head = log.state().head
    refused = httpx.put(f"{server.url}/categories/3", json={"name": "x" * 201}, timeout=10)
    assert refused.status_code == 500
    assert name_of(client, 3) == "n3"
    assert (outbox_count(engine), log.state().head) == (0, head)

    # SIGTERM: the lifespan's shutdown ran (uvicorn says so only once it returned), and
    # the app's runtime had relayed every row it committed.
    assert server.stopped_cleanly(), server.stderr()[-3000:]
    assert outbox_count(engine) == 0


async def pings_during_refreshes(url: str, rounds: int = 5) -> float:
    """Rename category 3 (which invalidates it in the app), then read it from many
    requests at once while timing /pings beside them; the slowest ping in seconds."""
    slowest = 0.0
    async with httpx.AsyncClient(base_url=url, timeout=10.0) as client:

        async def ping() -> float:
            start = time.monotonic()
            answer = await client.get("/ping")
            assert answer.json() == {"ok": True}
            return time.monotonic() - start

        for i in range(rounds):
            assert (await client.put("/categories/3", json={"name": f"r{i}"})).status_code == 200
            reads = [client.get("/categories/3") for _ in range(20)]
            answers = await asyncio.gather(*reads, *(ping() for _ in range(5)))
            assert {a.json()["name"] for a in answers[:20]} == {f"r{i}"}
            slowest = max(slowest, *answers[20:])
        await client.put("/categories/3", json={"name": "n3"})
    return slowest
