"""Fixtures of the suite: one PostgreSQL for the whole run, a name per test, app servers.

- ``pg``: the session's PostgresServer (tests/support/postgres.py), set up like
  Heroku Postgres, with a login role ``app`` (random password, CREATEDB, not a
  superuser) owning a database ``app``. ``pg.url()`` is the app's URL.
- ``appname``: an application_name unique to the test, so a test finds its own
  backends with ``pg.backends(application_name=appname)`` and its own logins
  with ``pg.connections_opened(application_name=appname)``.
- ``database_url``: ``pg.url()`` over TLS tagged with ``appname``: a DATABASE_URL.
- ``migrated``: the app's tables exist (``manage.py migrate``) and items
  item-1 .. item-100 are there.
- ``start_app``: starts AppServers (tests/support/appserver.py) and stops them
  after the test; if the test fails, their logs are added to its report.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator

import pytest

from support import stacks
from support.appserver import AppServer, AppServers
from support.postgres import PostgresServer, application_name_for

APP_ROLE = "app"
APP_DATABASE = "app"
SEEDED_ITEMS = 100


@pytest.fixture(scope="session")
def pg() -> Iterator[PostgresServer]:
    with PostgresServer() as server:
        server.create_role(APP_ROLE, secrets.token_urlsafe(18), createdb=True)
        server.create_database(APP_DATABASE, owner=APP_ROLE)
        yield server


@pytest.fixture
def appname(request: pytest.FixtureRequest) -> str:
    return application_name_for(request.node.nodeid)


@pytest.fixture
def database_url(pg: PostgresServer, appname: str) -> str:
    return pg.url(APP_DATABASE, APP_ROLE, sslmode="require", application_name=appname)


@pytest.fixture(scope="session")
def migrated(pg: PostgresServer) -> None:
    """The sample app's schema, made by its own migrations, plus SEEDED_ITEMS items."""
    env = {
        "DATABASE_URL": pg.url(
            APP_DATABASE, APP_ROLE, sslmode="require", application_name="migrate"
        )
    }
    stacks.check(
        stacks.run_manage(stacks.DEFAULT_STACK, "migrate", "--no-input", env=env, shim=False),
        "manage.py migrate",
    )
    stacks.check(
        stacks.run_manage(
            stacks.DEFAULT_STACK, "seed_items", str(SEEDED_ITEMS), env=env, shim=False
        ),
        "manage.py seed_items",
    )


@pytest.fixture
def start_app(
    request: pytest.FixtureRequest, pg: PostgresServer, migrated: None, database_url: str, tmp_path
) -> Iterator[Callable[..., AppServer]]:
    """``start_app(stack=DEFAULT_STACK, env=None, *, shim=True, **AppServer options)``.

    DATABASE_URL defaults to ``database_url`` (this test's application_name);
    ``env`` adds or overrides config vars. Returns the started AppServer.
    """
    servers = AppServers(request.node)

    def start(
        stack: str = stacks.DEFAULT_STACK, env: dict[str, str] | None = None, **options
    ) -> AppServer:
        options.setdefault("log_dir", tmp_path)
        return servers.start(
            AppServer(stack, {"DATABASE_URL": database_url, **(env or {})}, **options)
        )

    yield start
    servers.stop_all()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = yield
    if report.failed:
        for server in getattr(item, "djpool_app_servers", []):
            tail = "\n".join(server.log_text().splitlines()[-80:])
            report.sections.append((f"gunicorn log ({server.stack}, port {server.port})", tail))
    return report
