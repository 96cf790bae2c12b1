"""An app with one model on Continuum's native versioning (PostgreSQL triggers write its
versions), which the import refuses, beside ordinary models it can still import."""

import sqlalchemy as sa
from sqlalchemy.orm import declarative_base
from sqlalchemy_continuum import make_versioned
from sqlalchemy_continuum.plugins import TransactionMetaPlugin

make_versioned(user_cls=None, plugins=[TransactionMetaPlugin()])

Base = declarative_base()


class Plain(Base):
    __tablename__ = "plain"
    __versioned__: dict = {}
    id = sa.Column(sa.Integer, primary_key=True, autoincrement=False)
    name = sa.Column(sa.String(50))


class Triggered(Base):
    __tablename__ = "triggered"
    __versioned__: dict = {"native_versioning": True}
    id = sa.Column(sa.Integer, primary_key=True, autoincrement=False)
    name = sa.Column(sa.String(50))
