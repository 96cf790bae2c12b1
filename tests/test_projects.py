"""The app's projects (cache/items/projects.py): the setting, key coercion, listing and checks on
SQLite and PostgreSQL, and project-cache sync and delete through a REAL prefork worker on
a SODAR-shaped app (`projectroles_project.sodar_uuid`, a `sa.Uuid`) and on an app whose
projects are keyed by integer (`project.id`).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from cachework import migrate
from cachework.cache.items import store
from cachework.cache.items.projects import ProjectSource
from cachework.errors import ConfigError, NotFoundError, ValidationError
from cachework.importers.bootstrap import bootstrap
from cachework.settings import load_settings
from tests.conftest import MODELS, make_env

SODAR = "tests.sodar_app.models"
INTKEY = "tests.intkey_app.models"
U1 = uuid.UUID("0b7e2d4e-1f0c-4c8e-9a53-6f1e2d3c4b5a")
U2 = uuid.UUID("5d1c9a2b-3e4f-4a6b-8c7d-9e0f1a2b3c4d")
U3 = uuid.UUID("a3f8e9d0-7b6c-4d5e-8f9a-0b1c2d3e4f50")
CATEGORY = uuid.UUID("f0e1d2c3-b4a5-4968-8776-655443322110")
GONE = uuid.UUID("99999999-8888-4777-8666-555555555555")


def _settings(**values: str):
    env = {"CACHEWORK_DATA_DIR": "/tmp/cachework-unused"}
    env.update({f"CACHEWORK_{k.upper()}": v for k, v in values.items()})
    return load_settings(env)


@pytest.fixture(scope="module")
def sodar():
    """The SODAR-shaped model module, mapped through bootstrap (never imported before)."""
    return bootstrap((SODAR,)).modules[0]


@pytest.fixture(scope="module")
def intkey():
    return bootstrap((INTKEY,)).modules[0]


# --- the setting ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, ("projects", "uuid", "uuid")),
        ("", ("projects", "uuid", "uuid")),
        ("projectroles_project.sodar_uuid", ("projectroles_project", "sodar_uuid", None)),
        ("project.id:int", ("project", "id", "int")),
        ("teams.slug:TEXT", ("teams", "slug", "text")),
        (" app.projects.key:uuid ", ("app.projects", "key", "uuid")),
        ("off", None),
        ("None", None),
    ],
)
def test_the_setting_names_table_column_and_key_type(value, expected):
    settings = _settings() if value is None else _settings(projects=value)
    assert settings.projects == expected


@pytest.mark.parametrize(
    "value",
    [
        "projects",
        "projects.uuid:guid",
        "projects.uuid:",
        "a.b.c.d",
        "pro jects.uuid",
        "projects.",
        ".uuid",
        "projects.uu-id",
        "projects.uuid;drop table x",
        "false",
    ],
)
def test_bad_settings_name_the_variable_and_the_value(value):
    with pytest.raises(ConfigError) as info:
        _settings(projects=value)
    assert f"CACHEWORK_PROJECTS={value!r}" in str(info.value)


# --- from_settings ------------------------------------------------------------------------


def test_the_key_type_is_inferred_from_the_model_column(sodar, intkey):
    source = ProjectSource.from_settings(
        _settings(models=SODAR, projects="projectroles_project.sodar_uuid")
    )
    assert (source.table, source.column, source.key_type) == (
        "projectroles_project",
        "sodar_uuid",
        "uuid",
    )
    assert source.model_column is sodar.Project.__table__.c.sodar_uuid
    source = ProjectSource.from_settings(_settings(models=INTKEY, projects="project.id"))
    assert (source.key_type, source.label) == ("int", "project.id")
    # The example app's default: projects.uuid is a String(36) column, declared uuid.
    source = ProjectSource.from_settings(_settings())
    assert (source.table, source.column, source.key_type) == ("projects", "uuid", "uuid")
    assert source.model_column is MODELS.by_name()["Project"].__table__.c.uuid
    # Without a type, a string column holds text keys.
    assert ProjectSource.from_settings(_settings(projects="projects.uuid")).key_type == "text"


def test_a_table_outside_the_models_is_text_unless_typed(sodar):
    settings = _settings(models=SODAR, projects="teams.slug")
    source = ProjectSource.from_settings(settings)
    assert (source.key_type, source.model_column) == ("text", None)
    source = ProjectSource.from_settings(_settings(models=SODAR, projects="accounts.id:int"))
    assert (source.key_type, source.model_column) == ("int", None)
    # Explicit metadata (e.g. the runtime's models) instead of the loaded model modules.
    source = ProjectSource.from_settings(settings, metadata=[sodar.Base.metadata])
    assert source.key_type == "text"


@pytest.mark.parametrize(
    ("projects", "fragment"),
    [
        ("projectroles_project.uuid", "table 'projectroles_project' has no column 'uuid'"),
        ("projectroles_project.sodar_uuid:int", "holds uuid keys, not int"),
        ("projectroles_project.id:uuid", "holds int keys, not uuid"),
        ("projectroles_project.id:text", "holds int keys, not text"),
    ],
)
def test_a_setting_that_contradicts_the_models_is_a_config_error(sodar, projects, fragment):
    with pytest.raises(ConfigError) as info:
        ProjectSource.from_settings(_settings(models=SODAR, projects=projects))
    assert f"CACHEWORK_PROJECTS={projects!r}" in str(info.value)
    assert fragment in str(info.value)


def test_an_untyped_setting_before_the_models_are_loaded_is_a_config_error():
    settings = _settings(models="tests.never_imported_models", projects="things.key")
    with pytest.raises(ConfigError, match="not loaded yet"):
        ProjectSource.from_settings(settings)
    typed = _settings(models="tests.never_imported_models", projects="things.key:int")
    assert ProjectSource.from_settings(typed).key_type == "int"


def test_off_means_no_projects():
    source = ProjectSource.from_settings(_settings(projects="off"))
    assert source == ProjectSource.off()
    assert not source.enabled and source.label == "CACHEWORK_PROJECTS=off"


def test_a_bad_key_type_in_code_is_a_config_error():
    with pytest.raises(ConfigError, match="'guid' is not one of uuid, int, text"):
        ProjectSource("projects", "uuid", "guid")


# --- canonical keys ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key_type", "value", "canonical"),
    [
        ("uuid", U1, str(U1)),
        ("uuid", str(U1).upper(), str(U1)),
        ("uuid", U1.hex, str(U1)),
        ("uuid", "{" + str(U1) + "}", str(U1)),
        ("int", 42, "42"),
        ("int", "42", "42"),
        ("int", "042", "42"),
        ("int", -7, "-7"),
        ("int", 2**63 - 1, str(2**63 - 1)),
        ("text", "Team A", "Team A"),
        ("text", "x" * 255, "x" * 255),
        ("text", str(U1).upper(), str(U1).upper()),  # text keys are kept as given
        ("uuid", None, None),
        ("int", None, None),
        ("text", None, None),
    ],
)
def test_canonical_keys(key_type, value, canonical):
    assert ProjectSource("t", "c", key_type).canonical(value) == canonical


@pytest.mark.parametrize(
    ("key_type", "value", "message"),
    [
        ("uuid", "nope", "project='nope' is not a uuid"),
        ("uuid", 42, "project=42 must be a uuid"),
        ("uuid", "", "project='' is not a uuid"),
        ("int", "4x2", "project='4x2' is not an integer project id"),
        ("int", "", "project='' is not an integer project id"),
        ("int", " 42", "project=' 42' is not an integer project id"),
        ("int", "٤٢", "project='٤٢' is not an integer project id"),  # non-ASCII digits
        ("int", True, "project=True must be an integer project id"),
        ("int", 4.0, "project=4.0 must be an integer project id"),
        ("int", 2**63, f"project={2**63} is out of the 64-bit integer range"),
        ("int", "9" * 30, "is not an integer project id"),
        ("text", "", "project='' must be a non-empty string of <= 255"),
        ("text", "a\x00b", "project='a\\x00b' must be a non-empty string"),
        ("text", "x" * 256, "must be a non-empty string of <= 255 characters"),
        ("text", 42, "project=42 must be a non-empty string"),
    ],
)
def test_bad_keys_are_named(key_type, value, message):
    with pytest.raises(ValidationError) as info:
        ProjectSource("t", "c", key_type).canonical(value)
    assert message in str(info.value)


# --- on a database ----------------------------------------------------------------------------


def _engine(url: str, *metadatas: sa.MetaData) -> sa.Engine:
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    for metadata in metadatas:
        metadata.create_all(engine)
    migrate.upgrade(engine)  # ours, at head (a worker refuses a schema behind)
    return engine


def _seed_sodar(session: Session, sodar) -> None:
    session.add(sodar.Project(id=1, sodar_uuid=CATEGORY, title="Category", type="CATEGORY"))
    session.flush()
    for n, key in enumerate((U1, U2, U3), start=2):
        session.add(sodar.Project(id=n, sodar_uuid=key, title=f"Project {n}", parent_id=1))
    session.flush()
    for n, key in enumerate((U1, U1, U2), start=1):
        session.add(sodar.Investigation(project_uuid=key, title=f"I{n}", studies=n, active=n != 2))


def _seed_intkey(session: Session, intkey) -> None:
    for key in (42, 10, 2):
        session.add(intkey.Project(id=key, name=f"P{key}"))
    session.flush()
    for n, (key, done) in enumerate([(42, True), (42, False), (42, False), (2, True)]):
        session.add(intkey.Task(id=n + 1, project_id=key, title=f"t{n}", done=done))


def _items(engine: sa.Engine) -> dict[tuple, object]:
    with Session(engine) as session:
        rows = session.execute(sa.select(store.cache_items))
        return {(r.project, r.app_name, r.name): r.data for r in rows}


@pytest.fixture
def sodar_db(any_db_url, sodar) -> Iterator[sa.Engine]:
    engine = _engine(any_db_url, sodar.Base.metadata)
    with Session(engine) as session, session.begin():
        _seed_sodar(session, sodar)
    yield engine
    engine.dispose()


@pytest.fixture
def intkey_db(any_db_url, intkey) -> Iterator[sa.Engine]:
    engine = _engine(any_db_url, intkey.Base.metadata)
    with Session(engine) as session, session.begin():
        _seed_intkey(session, intkey)
    yield engine
    engine.dispose()


def _sodar_source(sodar) -> ProjectSource:
    return ProjectSource.from_settings(
        _settings(models=SODAR, projects="projectroles_project.sodar_uuid")
    )


def test_sodar_uuid_keys_are_listed_and_checked_in_canonical_form(sodar_db, sodar):
    source = _sodar_source(sodar)
    with Session(sodar_db) as session:
        stored = session.execute(sa.text("SELECT sodar_uuid FROM projectroles_project")).scalars()
        if sodar_db.dialect.name == "sqlite":  # sa.Uuid: 32 hex characters, no hyphens
            assert {str(v) for v in stored} == {u.hex for u in (U1, U2, U3, CATEGORY)}
        assert source.list(session) == sorted(str(u) for u in (U1, U2, U3, CATEGORY))
        for given in (U1, str(U1), str(U1).upper(), U1.hex):
            assert source.check(session, given) == str(U1)
        assert source.check(session, None) is None
        with pytest.raises(NotFoundError) as info:
            source.check(session, str(GONE).upper())
        assert str(info.value) == (
            f"project {str(GONE)!r} does not exist (no row in projectroles_project.sodar_uuid)"
        )
        with pytest.raises(ValidationError, match="project='nope' is not a uuid"):
            source.check(session, "nope")


def test_a_key_beyond_an_int4_column_is_not_found_not_a_database_error(sodar_db, sodar):
    source = ProjectSource("projectroles_project", "id", "int", sodar.Project.__table__.c.id)
    with Session(sodar_db) as session:
        assert source.check(session, "2") == "2"
        with pytest.raises(NotFoundError, match=f"project '{2**40}' does not exist"):
            source.check(session, 2**40)


def test_integer_keys_in_a_text_column_compare_as_text(sodar_db, sodar):
    """`:int` on a model's string column: canonical digits compared as strings."""
    source = ProjectSource.from_settings(
        _settings(models=SODAR, projects="projectroles_project.title:int")
    )
    with Session(sodar_db) as session, session.begin():
        session.execute(sa.update(sodar.Project).where(sodar.Project.id == 2).values(title="17"))
    with Session(sodar_db) as session:
        assert source.list(session) == ["17"]  # the other titles are not integers: skipped
        assert source.check(session, "017") == "17"
        with pytest.raises(NotFoundError, match=r"no row in projectroles_project\.title"):
            source.check(session, 18)


def test_integer_keys_are_listed_in_numeric_order_and_checked(intkey_db, intkey):
    source = ProjectSource.from_settings(_settings(models=INTKEY, projects="project.id"))
    with Session(intkey_db) as session:
        assert source.list(session) == ["2", "10", "42"]
        for given in (42, "42", "042", "+42"):
            assert source.check(session, given) == "42"
        with pytest.raises(
            NotFoundError, match=r"project '7' does not exist \(no row in project.id\)"
        ):
            source.check(session, 7)
        with pytest.raises(ValidationError, match="project='4x2' is not an integer project id"):
            source.check(session, "4x2")


def test_a_table_outside_the_models_is_queried_by_name(any_db_url):
    engine = _engine(any_db_url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("CREATE TABLE teams (slug VARCHAR(100) PRIMARY KEY)"))
            conn.execute(sa.text("CREATE TABLE accounts (id BIGINT PRIMARY KEY)"))
            conn.execute(sa.text("INSERT INTO teams VALUES ('beta'), ('Alpha'), ('gamma x')"))
            conn.execute(sa.text(f"INSERT INTO accounts VALUES (300), (7), ({2**40})"))
        teams = ProjectSource.from_settings(_settings(projects="teams.slug"), metadata=[])
        accounts = ProjectSource.from_settings(_settings(projects="accounts.id"), metadata=[])
        assert (teams.key_type, accounts.key_type) == ("text", "text")  # untyped, unknown
        accounts = ProjectSource.from_settings(_settings(projects="accounts.id:int"), metadata=[])
        with Session(engine) as session:
            assert teams.list(session) == sorted(["beta", "Alpha", "gamma x"])
            assert teams.check(session, "gamma x") == "gamma x"
            with pytest.raises(
                NotFoundError, match=r"'alpha' does not exist \(no row in teams.slug"
            ):
                teams.check(session, "alpha")
            assert accounts.list(session) == ["7", "300", str(2**40)]
            assert accounts.check(session, "007") == "7"
            assert accounts.check(session, 2**40) == str(2**40)
    finally:
        engine.dispose()


def test_native_uuid_and_schema_qualified_tables_on_postgresql(pg_url):
    engine = _engine(pg_url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("CREATE SCHEMA lab"))
            conn.execute(sa.text("CREATE TABLE lab.groups (key uuid PRIMARY KEY)"))
            conn.execute(sa.text(f"INSERT INTO lab.groups VALUES ('{U2}'), ('{U1}')"))
        source = ProjectSource.from_settings(_settings(projects="lab.groups.key:uuid"), metadata=[])
        assert (source.table, source.label) == ("lab.groups", "lab.groups.key")
        with Session(engine) as session:
            assert source.list(session) == sorted([str(U1), str(U2)])
            assert source.check(session, str(U2).upper()) == str(U2)
            with pytest.raises(NotFoundError, match=r"no row in lab\.groups\.key"):
                source.check(session, GONE)
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text("DROP SCHEMA lab CASCADE"))
        engine.dispose()


def test_orphans_are_accepted_only_when_asked_and_only_with_items(sodar_db, sodar):
    source = _sodar_source(sodar)
    with Session(sodar_db) as session, session.begin():
        store.set_item(session, "samplesheets", "summary", {"old": True}, project=str(GONE))
    with Session(sodar_db) as session:
        with pytest.raises(NotFoundError):
            source.check(session, GONE)
        assert source.check(session, str(GONE).upper(), allow_orphans=True) == str(GONE)
        with pytest.raises(NotFoundError, match="does not exist"):
            source.check(session, uuid.UUID(int=5), allow_orphans=True)  # no items either


def test_off_lists_nothing_and_names_the_setting(any_db_url):
    engine = _engine(any_db_url)
    source = ProjectSource.off()
    try:
        with Session(engine) as session, session.begin():
            store.set_item(session, "app", "x", 1, project="left-over")
        with Session(engine) as session:
            assert source.list(session) == []
            assert source.check(session, None) is None
            with pytest.raises(NotFoundError) as info:
                source.check(session, "p1")
            assert "project 'p1': no projects table is configured (CACHEWORK_PROJECTS=off" in str(
                info.value
            )
            assert source.check(session, "left-over", allow_orphans=True) == "left-over"
    finally:
        engine.dispose()


def _delete(engine: sa.Engine, source: ProjectSource, project: object) -> int:
    """What a delete job does: check, then delete, in one transaction."""
    with Session(engine) as session, session.begin():
        key = source.check(session, project, allow_orphans=True)
        return store.delete_items(session, project=key)


def test_bad_or_unknown_projects_change_nothing(intkey_db, intkey):
    source = ProjectSource.from_settings(_settings(models=INTKEY, projects="project.id"))
    with Session(intkey_db) as session, session.begin():
        for key in source.list(session):
            store.set_item(session, "board", "counts", {"k": key}, project=key)
        store.set_item(session, "board", "site", 1)
    before = _items(intkey_db)
    for bad, error, message in [
        ("abc", ValidationError, "project='abc' is not an integer project id"),
        (3.5, ValidationError, "project=3.5 must be an integer project id"),
        (11, NotFoundError, "project '11' does not exist (no row in project.id)"),
    ]:
        with pytest.raises(error) as info:
            _delete(intkey_db, source, bad)
        assert message in str(info.value)
    assert _items(intkey_db) == before
    assert _delete(intkey_db, source, "0042") == 1
    assert ("42", "board", "counts") not in _items(intkey_db)


# --- through a real worker ----------------------------------------------------------------


def _start(worker_process, tmp_path: Path, db_url: str, redis_url: str, models: str, projects):
    env = make_env(
        tmp_path,
        database_url=db_url,
        broker_url=redis_url,
        result_backend=redis_url,
        models=models,
        projects=projects,
        cached_tables="off",
    )
    _node, app = worker_process(env)
    return app


def _call(app, name: str, **kwargs) -> dict:
    return app.send_task(name, kwargs=kwargs).get(timeout=90, interval=0.05)


def _fails(app, name: str, message: str, **kwargs) -> None:
    result = app.send_task(name, kwargs=kwargs)
    with pytest.raises(Exception) as info:
        result.get(timeout=60, interval=0.05)
    assert message in str(info.value)
    assert result.status == "FAILURE"


def _expected_sodar(engine: sa.Engine) -> dict[tuple, object]:
    """Every item of the samplesheets plugin, computed with plain SQL."""
    with engine.connect() as conn:
        projects = conn.execute(
            sa.text("SELECT id, sodar_uuid, title, type FROM projectroles_project")
        ).all()
        investigations = conn.execute(
            sa.text("SELECT project_uuid, studies, active FROM samplesheets_investigation")
        ).all()

    def key(value) -> str:
        return str(uuid.UUID(str(value)))

    expected: dict[tuple, object] = {}
    for _id, project, title, _type in projects:
        mine = [i for i in investigations if key(i.project_uuid) == key(project)]
        expected[(key(project), "samplesheets", "summary")] = {
            "title": title,
            "investigations": len(mine),
            "studies": sum(i.studies for i in mine),
            "active": sum(1 for i in mine if i.active),
        }
    expected[(None, "samplesheets", "overview")] = {
        "projects": sum(1 for p in projects if p.type == "PROJECT"),
        "categories": sum(1 for p in projects if p.type == "CATEGORY"),
        "investigations": len(investigations),
    }
    return expected


def test_sodar_shaped_app_sync_and_delete_through_a_real_worker(
    worker_process, tmp_path, any_db_url, redis_url, sodar
):
    engine = _engine(any_db_url, sodar.Base.metadata)
    try:
        with Session(engine) as session, session.begin():
            _seed_sodar(session, sodar)
        app = _start(
            worker_process,
            tmp_path,
            any_db_url,
            redis_url,
            SODAR,
            "projectroles_project.sodar_uuid",  # the key type is inferred from sa.Uuid
        )
        expected = _expected_sodar(engine)
        summary = (str(U1), "samplesheets", "summary")
        assert expected[summary]["investigations"] == 2

        # One project, given in upper case without hyphens: stored under its canonical key.
        assert _call(app, "cachework.sync_cache", project=U1.hex.upper()) == {
            "updated": 1,
            "projects": 1,
            "errors": [],
        }
        assert _items(engine) == {summary: expected[summary]}

        # Every project (fanned out over the queue) and the site-wide items.
        result = _call(app, "cachework.sync_cache", user="ci")
        assert result == {"updated": 5, "projects": 4, "errors": []}
        assert _items(engine) == expected

        # Bad and unknown projects fail naming the value, and change nothing.
        _fails(app, "cachework.sync_cache", "project='nope' is not a uuid", project="nope")
        _fails(
            app,
            "cachework.delete_cache",
            f"project {str(GONE)!r} does not exist (no row in projectroles_project.sodar_uuid)",
            project=str(GONE),
        )
        assert _items(engine) == expected

        # Delete one project's items; the others stay.
        assert _call(app, "cachework.delete_cache", project=str(U2).upper()) == {"deleted": 1}
        del expected[(str(U2), "samplesheets", "summary")]
        assert _items(engine) == expected

        # A project deleted from the app: its leftover items can still be deleted.
        with Session(engine) as session, session.begin():
            session.execute(sa.delete(sodar.Project).where(sodar.Project.sodar_uuid == U3))
        assert _call(app, "cachework.delete_cache", project=str(U3)) == {"deleted": 1}
        assert _call(app, "cachework.delete_cache", app_name="samplesheets") == {"deleted": 3}
        assert _items(engine) == {}
    finally:
        engine.dispose()


def test_integer_keyed_app_sync_and_delete_through_a_real_worker(
    worker_process, tmp_path, pg_url, redis_url, intkey
):
    engine = _engine(pg_url, intkey.Base.metadata)
    try:
        with Session(engine) as session, session.begin():
            _seed_intkey(session, intkey)
        app = _start(worker_process, tmp_path, pg_url, redis_url, INTKEY, "project.id")
        counts = {
            "42": {"name": "P42", "open": 2, "done": 1},
            "10": {"name": "P10", "open": 0, "done": 0},
            "2": {"name": "P2", "open": 0, "done": 1},
        }
        expected = {(k, "board", "counts"): v for k, v in counts.items()}

        # One project, as a JSON integer, then as a string with a leading zero.
        one = {"updated": 1, "projects": 1, "errors": []}
        assert _call(app, "cachework.sync_cache", project=42) == one
        assert _items(engine) == {("42", "board", "counts"): counts["42"]}
        assert _call(app, "cachework.sync_cache", project="010", app_name="board") == one
        assert set(_items(engine)) == {("42", "board", "counts"), ("10", "board", "counts")}

        # Every project, fanned out (board has no site-wide items).
        assert _call(app, "cachework.sync_cache") == {"updated": 3, "projects": 3, "errors": []}
        assert _items(engine) == expected

        _fails(
            app, "cachework.sync_cache", "project='4x2' is not an integer project id", project="4x2"
        )
        _fails(
            app,
            "cachework.sync_cache",
            "project '7' does not exist (no row in project.id)",
            project=7,
        )
        assert _items(engine) == expected

        assert _call(app, "cachework.delete_cache", project="42") == {"deleted": 1}
        del expected[("42", "board", "counts")]
        assert _items(engine) == expected
        assert _call(app, "cachework.delete_cache") == {"deleted": 2}
        assert _items(engine) == {}
    finally:
        engine.dispose()
