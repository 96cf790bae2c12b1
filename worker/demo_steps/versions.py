"""Demo step: version import of rows Continuum never saw, then of plain-SQL changes."""

from __future__ import annotations

import sqlalchemy as sa
from rich.table import Table
from sqlalchemy_continuum import version_class

from cachework.worker import routing
from cachework.worker.cli.versions import summary_table

OPERATIONS = {0: "insert", 1: "update", 2: "delete"}


def _history(ctx, product_id: int) -> Table:
    from demo.models import Product

    ProductVersion = version_class(Product)
    table = Table(title=f"history of product {product_id} (Continuum's version table)")
    for name in ("transaction", "operation", "end transaction", "name", "price", "comment"):
        table.add_column(name)
    with ctx.session() as session:
        versions = session.scalars(
            sa.select(ProductVersion)
            .where(ProductVersion.id == product_id)
            .order_by(ProductVersion.transaction_id)
        ).all()
        for v in versions:
            table.add_row(
                str(v.transaction_id),
                OPERATIONS[v.operation_type],
                "open" if v.end_transaction_id is None else str(v.end_transaction_id),
                v.name,
                str(v.price),
                v.transaction.meta.get("comment", ""),
            )
    return table


def run(ctx) -> None:
    ctx.console.rule("version import")
    ctx.console.print("  the seeded rows were written with plain SQL: Continuum has no versions")
    result = ctx.call(routing.IMPORT_VERSIONS, user="demo", comment="demo: first import")
    ctx.console.print(summary_table(result))
    with ctx.database.session() as session:
        session.execute(sa.text("UPDATE products SET price = price + 1 WHERE id % 10 = 1"))
        session.execute(sa.text("UPDATE products SET name = 'Renamed 2' WHERE id = 2"))
        session.execute(sa.text("DELETE FROM products WHERE id = 3"))
    ctx.console.print(
        "  changed rows with plain SQL: prices of ids 1, 11, 21 ..., name of 2, deleted 3"
    )
    dry = ctx.call(routing.IMPORT_VERSIONS, dry_run=True)
    ctx.console.print(f"  dry run would write: {dry['models']['Product']}")
    result = ctx.call(routing.IMPORT_VERSIONS, user="demo", comment="demo: after plain SQL")
    ctx.console.print(summary_table(result))
    again = ctx.call(routing.IMPORT_VERSIONS, comment="demo: nothing to do")
    ctx.console.print(
        f"  a third import finds nothing: transaction_id={again['transaction_id']}, "
        f"products unchanged={again['models']['Product']['unchanged']}"
    )
    ctx.console.print(_history(ctx, 1))
    ctx.console.print(_history(ctx, 3))
