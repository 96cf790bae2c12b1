"""The app's engine and session factory, imported by every process of the app."""

import os

import sqlalchemy as sa
from sqlalchemy.orm import sessionmaker

from cachework.api import enable

engine = sa.create_engine(os.environ["CACHEWORK_DATABASE_URL"])
Session = sessionmaker(engine)
runtime = enable(Session)  # tracked here and in every process forked from here
