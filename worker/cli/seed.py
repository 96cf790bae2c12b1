"""`cachework seed`: fill the example app (demo.models) on the configured database, for a
trial of a deployment (PostgreSQL, Redis, RabbitMQ, real workers) without a script.

Rows are written with plain SQL inserts, so Continuum records no versions for them: what
`cachework import-versions` then repairs. `--append` adds products to an app seeded
before.
"""

from __future__ import annotations

import click
import sqlalchemy as sa

from cachework.errors import ConfigError, ValidationError
from cachework.worker.cli.context import cli_runtime

DEMO_MODELS = "demo.models"


@click.command()
@click.option("--projects", default=3, show_default=True, type=click.IntRange(min=1))
@click.option("--products", default=1000, show_default=True, type=click.IntRange(min=0))
@click.option("--append", is_flag=True, help="Add products to an app seeded before.")
def seed(projects: int, products: int, append: bool) -> None:
    """Fill the example app (projects, categories, products) for a trial."""
    with cli_runtime() as runtime:
        if DEMO_MODELS not in runtime.settings.models:
            raise ConfigError(
                f"cachework seed fills the example app ({DEMO_MODELS}); CACHEWORK_MODELS="
                f"{','.join(runtime.settings.models)!r} does not include it"
            )
        runtime.models  # noqa: B018 - Continuum first, then the models (bootstrap)
        from demo.models import Product, Project
        from demo.seed import seed as seed_rows

        with runtime.database.session() as session:
            have = session.execute(sa.select(sa.func.count()).select_from(Product)).scalar_one()
            start = 0
            if have and not append:
                raise ValidationError(
                    f"the example app already has {have} products: add more with --append"
                )
            if have or append:
                start = session.execute(sa.select(sa.func.max(Product.id))).scalar_one() or 0
                existing = session.execute(
                    sa.select(sa.func.count()).select_from(Project)
                ).scalar_one()
                if start and not existing:
                    raise ValidationError("products without projects: cannot --append")
                projects = existing or projects
            counts = seed_rows(session, projects=projects, products=products, start=start)
        url = runtime.database.engine.url.render_as_string(hide_password=True)
    click.echo(
        f"seeded {url}: {counts['projects']} projects, {counts['categories']} categories, "
        f"{counts['products']} products (plain inserts: no versions yet)"
    )
    click.echo("next: cachework import-versions, cachework sync-cache")


COMMANDS = [seed]
