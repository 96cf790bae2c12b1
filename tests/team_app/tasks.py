"""The team's own tasks: ORM writes through the app's session factory."""

from shop.db import Session
from shop.models import Category

from cache import label  # the team's own `cache` package, not cachework's
from worker import celery


@celery.task(name="team.rename")
def rename(category_id: int, name: str) -> str:
    with Session.begin() as session:
        session.get(Category, category_id).name = label(name)
    return label(name)
