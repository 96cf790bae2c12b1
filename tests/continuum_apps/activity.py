"""An app set up with Continuum's ActivityPlugin, as its documentation shows. The plugin
hooks into the flush (it attaches the transaction to the app's Activity objects); the
import refuses it, and, as make_versioned() installs plugins for every versioned model,
every model with it, also when named."""

import sqlalchemy as sa
from sqlalchemy.orm import declarative_base
from sqlalchemy_continuum import make_versioned
from sqlalchemy_continuum.plugins import ActivityPlugin, TransactionMetaPlugin

make_versioned(user_cls=None, plugins=[TransactionMetaPlugin(), ActivityPlugin()])

Base = declarative_base()


class Item(Base):
    __tablename__ = "items"
    __versioned__: dict = {}
    id = sa.Column(sa.Integer, primary_key=True, autoincrement=False)
    name = sa.Column(sa.String(50))


class Other(Base):
    __tablename__ = "others"
    __versioned__: dict = {}
    id = sa.Column(sa.Integer, primary_key=True, autoincrement=False)
    name = sa.Column(sa.String(50))
