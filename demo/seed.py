"""A deterministic seeder for the demo, the tests and the benchmarks.

It writes live rows with Core bulk inserts, so Continuum records no versions for them:
exactly the situation a version import exists to repair. The same arguments always give
the same rows.
"""

from __future__ import annotations

import random
import uuid
from decimal import Decimal

import sqlalchemy as sa
from sqlalchemy.orm import Session

from demo.models import Category, Product, Project

CATEGORIES = (
    ("tools", "Tools"),
    ("garden", "Garden"),
    ("kitchen", "Kitchen"),
    ("books", "Books"),
    ("toys", "Toys"),
    ("office", "Office"),
    ("sports", "Sports"),
    ("music", "Music"),
)
_NAMESPACE = uuid.UUID("6f1c2d64-7a4e-4c55-9a39-0d2b7c1e5a10")
BATCH = 5_000


def project_uuid(index: int) -> str:
    """The uuid the seeder gives project number `index` (stable across runs)."""
    return str(uuid.uuid5(_NAMESPACE, f"project-{index}"))


def seed(session: Session, projects: int = 3, products: int = 30, start: int = 0) -> dict:
    """Insert `projects` projects, the categories and `products` products (round-robin).

    Product ids run from `start + 1`, so a second call with `start` appends. Returns the
    counts written. The caller owns the transaction.
    """
    if projects < 1 and products:
        raise ValueError(f"projects={projects!r}: products need at least one project")
    rng = random.Random(20261122 + start)
    if start == 0:
        session.execute(
            sa.insert(Category),
            [
                {"id": i + 1, "code": code, "name": name}
                for i, (code, name) in enumerate(CATEGORIES)
            ],
        )
        session.execute(
            sa.insert(Project),
            [{"uuid": project_uuid(i), "title": f"Project {i + 1}"} for i in range(projects)],
        )
    rows = []
    for n in range(start + 1, start + products + 1):
        rows.append(
            {
                "id": n,
                "sku": f"SKU-{n:07d}",
                "name": f"Product {n}",
                "price": Decimal(rng.randrange(100, 100_000)) / 100,
                "category_id": None if n % 17 == 0 else rng.randrange(len(CATEGORIES)) + 1,
                "project_uuid": project_uuid((n - 1) % projects),
                "active": n % 5 != 0,
            }
        )
        if len(rows) == BATCH:
            session.execute(sa.insert(Product), rows)
            rows = []
    if rows:
        session.execute(sa.insert(Product), rows)
    return {
        "projects": projects if start == 0 else 0,
        "categories": len(CATEGORIES) if start == 0 else 0,
        "products": products,
    }
