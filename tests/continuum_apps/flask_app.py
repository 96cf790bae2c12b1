"""A Flask app's models, set up as Continuum's FlaskPlugin documentation shows: the plugin
fills the transaction's user and remote address from the current request. It only
supplies transaction arguments, so the import accepts it; outside a request (a worker, the
CLI) it supplies nothing and the run's own user and address apply."""

import flask
import sqlalchemy as sa
from sqlalchemy.orm import declarative_base
from sqlalchemy_continuum import make_versioned
from sqlalchemy_continuum.plugins import FlaskPlugin

app = flask.Flask(__name__)


def current_user_id() -> int | None:
    """Apps with flask-login use the plugin's default (`current_user.id`); this one keeps
    its user on `flask.g`. The remote address is the plugin's own (`request.remote_addr`)."""
    return flask.g.get("user_id") if flask.has_request_context() else None


make_versioned(user_cls="User", plugins=[FlaskPlugin(current_user_id_factory=current_user_id)])

Base = declarative_base()


class User(Base):
    __tablename__ = "user"
    id = sa.Column(sa.Integer, primary_key=True, autoincrement=False)


class Item(Base):
    __tablename__ = "items"
    __versioned__: dict = {}
    id = sa.Column(sa.Integer, primary_key=True, autoincrement=False)
    name = sa.Column(sa.String(50))
