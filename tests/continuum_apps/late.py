"""An app whose make_versioned() call comes after a first versioned class is mapped (in
a models module imported before it): Continuum would miss that class; cachework hands it
over, so the app's own set-up (here: an integer-keyed user class) applies to it too."""

import sqlalchemy as sa
from sqlalchemy.orm import declarative_base

Base = declarative_base()


class Early(Base):
    __tablename__ = "early"
    __versioned__: dict = {}
    id = sa.Column(sa.Integer, primary_key=True, autoincrement=False)
    name = sa.Column(sa.String(50))


from sqlalchemy_continuum import make_versioned  # noqa: E402

make_versioned(user_cls="User")


class User(Base):
    __tablename__ = "users"
    id = sa.Column(sa.Integer, primary_key=True, autoincrement=False)
