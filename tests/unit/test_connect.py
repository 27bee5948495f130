"""DATABASE_URL and the RDS secret read without SQLAlchemy (promptrun.db.connect): what the
processor's pool connects with, and the same target the engines get."""

from __future__ import annotations

import pytest

from promptrun.db.connect import Target, target
from promptrun.db.engine import database_url
from promptrun.errors import ConfigError
from promptrun.settings import Settings


def test_a_url_with_escapes_an_ipv6_host_and_options() -> None:
    url = "postgresql+pg8000://app%40x:p%3Aw%2Fd@[::1]:5433/jobs?sslmode=disable&application_name=p"
    where = Target.parse(url)
    assert (where.user, where.password, where.host, where.port) == ("app@x", "p:w/d", "::1", 5433)
    assert where.database == "jobs"
    kwargs = where.connect_kwargs()
    assert kwargs["ssl_context"] is False and kwargs["application_name"] == "p"
    assert "sslmode" not in kwargs and kwargs["password"] == "p:w/d"
    assert "p:w/d" not in repr(where)


def test_the_engine_gets_the_same_target() -> None:
    settings = Settings(database_url="postgresql+pg8000://u:s%23cret@db.example.com/app")
    url = database_url(settings)
    mine = target(settings)
    assert (url.username, url.password, url.host, url.port, url.database) == (
        mine.user,
        mine.password,
        mine.host,
        mine.port,
        mine.database,
    )
    assert mine.connect_kwargs()["ssl_context"].check_hostname is True  # verify-full by default


def test_database_host_replaces_the_host_for_rds_proxy() -> None:
    settings = Settings(
        database_url="postgresql+pg8000://u:p@db.example.com:5432/app",
        database_host="proxy.example.com",
    )
    assert target(settings).host == "proxy.example.com" and target(settings).port == 5432


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("postgresql+pg8000://u:p@h:notaport/d", "not a valid database URL"),
        ("postgresql://u:p@h/d", "must be a postgresql\\+pg8000:// URL with a host"),
        ("postgresql+pg8000:///d", "with a host"),
    ],
)
def test_a_bad_url_is_refused_without_echoing_it(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        Target.parse(url)
    assert ":p@" not in str(info.value)


def test_a_secret_missing_fields_names_them() -> None:
    with pytest.raises(ConfigError, match="lacks password, host"):
        Target.from_secret({"username": "app"})
