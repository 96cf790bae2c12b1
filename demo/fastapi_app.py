"""cachework in a FastAPI app: cached-table reads that never block the loop, and writes
through the app's own AsyncSession that invalidate every process's cache, with no
publish() call and no Celery in the web process.

    CACHEWORK_DATABASE_URL=postgresql+psycopg://... uvicorn demo.fastapi_app:app

APP_DATABASE_URL is the app's own async URL (default: cachework's database, on asyncpg).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from typing import Annotated

import sqlalchemy as sa
from fastapi import Depends, FastAPI, HTTPException, Request
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

from cachework.api import aio, runtime_lifespan, track


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    # The process's runtime (CACHEWORK_* settings): caught up, then listening in a thread.
    async with runtime_lifespan() as runtime:
        default = sa.make_url(runtime.settings.database_url).set(drivername="postgresql+asyncpg")
        engine = create_async_engine(os.environ.get("APP_DATABASE_URL") or default)
        Session = async_sessionmaker(engine, expire_on_commit=False)  # rows outlive commit
        tracking = track(Session, runtime)  # its commits invalidate the cached tables
        app.state.runtime, app.state.Session = runtime, Session
        try:
            yield
        finally:
            tracking.stop()
            await engine.dispose()


app = FastAPI(lifespan=lifespan)


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    async with request.app.state.Session() as session:
        yield session


SessionDep = Annotated[AsyncSession, Depends(get_session)]


class Rename(BaseModel):
    name: str


@app.get("/categories/{id}")
async def get_category(id: int, request: Request) -> dict:
    # From memory; a load or refresh runs in cachework's threads, never on the loop.
    category = await aio.table(request.app.state.runtime, "categories").get(id)
    if category is None:
        raise HTTPException(404, "no such category")
    return dict(category)


@app.put("/categories/{id}")
async def rename_category(id: int, body: Rename, session: SessionDep) -> dict:
    from demo.models import Category  # the runtime set the models up (Continuum first)

    category = await session.get(Category, id)
    if category is None:
        raise HTTPException(404, "no such category")
    category.name = body.name
    await session.commit()  # once it returns, this process reads the new name
    return {"id": category.id, "code": category.code, "name": category.name}


@app.get("/projects/{key}/items")
async def project_items(key: str, session: SessionDep) -> dict:
    items = await aio.get_project_items(session, key, app_name="inventory")
    return {i.name: {"data": i.data, "updated_at": i.updated_at.isoformat()} for i in items}


@app.get("/ping")
async def ping() -> dict:
    return {"ok": True}
