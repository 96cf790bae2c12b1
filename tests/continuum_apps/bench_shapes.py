"""The benchmark's second model set (`bench/versions.py --suite shapes`): a joined-table
inheritance pair (`Entry` <- `Post`, tables `bench_entries` and `bench_posts`) whose
subclass has a many-to-many `tags` through the versioned association `bench_post_tag`,
and the flat `Tag`. No make_versioned here: cachework's defaults apply."""

import sqlalchemy as sa
from sqlalchemy.orm import declarative_base, relationship

Base = declarative_base()

post_tag = sa.Table(
    "bench_post_tag",
    Base.metadata,
    sa.Column("post_id", sa.Integer, sa.ForeignKey("bench_posts.id"), primary_key=True),
    sa.Column("tag_id", sa.Integer, sa.ForeignKey("bench_tags.id"), primary_key=True),
)


class Tag(Base):
    __tablename__ = "bench_tags"
    __versioned__: dict = {}
    id = sa.Column(sa.Integer, primary_key=True, autoincrement=False)
    name = sa.Column(sa.String(50))


class Entry(Base):
    __tablename__ = "bench_entries"
    __versioned__: dict = {}
    id = sa.Column(sa.Integer, primary_key=True, autoincrement=False)
    kind = sa.Column(sa.String(20))
    title = sa.Column(sa.String(100))
    score = sa.Column(sa.Numeric(10, 2))
    __mapper_args__ = {"polymorphic_on": kind, "polymorphic_identity": "entry"}


class Post(Entry):
    __tablename__ = "bench_posts"
    __versioned__: dict = {}
    id = sa.Column(sa.Integer, sa.ForeignKey("bench_entries.id"), primary_key=True)
    body = sa.Column(sa.Text)
    views = sa.Column(sa.Integer)
    tags = relationship(Tag, secondary=post_tag)
    __mapper_args__ = {"polymorphic_identity": "post"}
