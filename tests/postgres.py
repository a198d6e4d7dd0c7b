"""A throwaway PostgreSQL database and login role per test, on the cluster that .ci/run starts.

.ci/run exports ARCHLAB_TEST_PG_URL, a superuser URL of a local throwaway cluster; without it the tests that need
PostgreSQL skip and say so.
"""

import contextlib
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit

import pytest

PG_URL_ENV = "ARCHLAB_TEST_PG_URL"


@dataclass(frozen=True)
class Database:
    url: str  # postgresql://role@host:port/name, no password: it goes in PGPASSWORD
    password: str  # random, so it doubles as a canary to search for in outputs


@contextlib.contextmanager
def throwaway_database() -> Iterator[Database]:
    admin_url = os.environ.get(PG_URL_ENV)
    if not admin_url:
        pytest.skip(f"{PG_URL_ENV} is not set; .ci/run starts a throwaway PostgreSQL cluster and sets it")
    import psycopg2

    name = f"sweep_{secrets.token_hex(6)}"
    password = f"canary{secrets.token_hex(12)}"
    admin = psycopg2.connect(admin_url)
    admin.autocommit = True
    try:
        with admin.cursor() as cur:
            cur.execute(f"CREATE ROLE {name} LOGIN PASSWORD %s", (password,))
            cur.execute(f"CREATE DATABASE {name} OWNER {name}")
        parts = urlsplit(admin_url)
        yield Database(url=f"postgresql://{name}@{parts.hostname}:{parts.port}/{name}", password=password)
    finally:
        with admin.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            cur.execute(f"DROP ROLE IF EXISTS {name}")
        admin.close()
