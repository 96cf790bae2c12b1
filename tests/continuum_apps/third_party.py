"""An app with a third-party plugin that changes version objects during the flush: the
import cannot know what it would have written, so it refuses every model, naming it."""

import sqlalchemy as sa
from sqlalchemy.orm import declarative_base
from sqlalchemy_continuum import make_versioned
from sqlalchemy_continuum.plugins import Plugin, TransactionMetaPlugin


class StampPlugin(Plugin):
    """Writes something of its own on every version object."""

    def after_create_version_object(self, uow, parent_obj, version_obj):
        version_obj.name = (version_obj.name or "") + "!"


class AddressPlugin(Plugin):
    """Only supplies transaction arguments: harmless, Continuum's own call applies it."""

    def transaction_args(self, uow, session):
        return {"remote_addr": "192.0.2.9"}


make_versioned(user_cls=None, plugins=[TransactionMetaPlugin(), AddressPlugin(), StampPlugin()])

Base = declarative_base()


class Item(Base):
    __tablename__ = "items"
    __versioned__: dict = {}
    id = sa.Column(sa.Integer, primary_key=True, autoincrement=False)
    name = sa.Column(sa.String(50))
