from __future__ import annotations

import socket
from dataclasses import fields
from pathlib import Path

import pytest

from pipeline.settings import (
    Derived,
    Secret,
    Settings,
    SettingsError,
    declared,
    load_settings,
    normalize_database_url,
)


def test_defaults_run_locally_on_embedded_storage(tmp_path: Path) -> None:
    s = load_settings({"PIPELINE_DATA_DIR": str(tmp_path)})
    assert s.kafka_bootstrap_servers == "127.0.0.1:9092"
    assert not s.kafka_external
    assert s.database_url == f"sqlite+aiosqlite:///{tmp_path / 'pipeline.db'}"
    assert s.store == "rocksdb://"
    assert s.web_host == "127.0.0.1" and s.web_is_loopback
    # One directory per release: a release cannot read the storage another formatted.
    assert s.kafka_data_dir == tmp_path / "kafka" / s.kafka_version
    assert s.kafka_controller_port == 9093


def test_bootstrap_servers_from_environment_means_an_external_cluster() -> None:
    s = load_settings({"KAFKA_BOOTSTRAP_SERVERS": "k1:9092,k2:9092"})
    assert s.kafka_external
    assert s.kafka_bootstrap_servers == "k1:9092,k2:9092"


def test_local_port_moves_the_default_bootstrap_address() -> None:
    s = load_settings({"PIPELINE_KAFKA_PORT": "19092"})
    assert s.kafka_bootstrap_servers == "127.0.0.1:19092"
    assert s.kafka_controller_port == 19093


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"PIPELINE_WEB_PORT": "http"}, "PIPELINE_WEB_PORT='http' is not an integer"),
        ({"PIPELINE_PARTITIONS": "0"}, "PIPELINE_PARTITIONS=0 is out of range"),
        ({"PIPELINE_COMMIT_INTERVAL_MS": "0"}, "PIPELINE_COMMIT_INTERVAL_MS=0 is out of range"),
        ({"PIPELINE_KAFKA_VERSION": "latest"}, "PIPELINE_KAFKA_VERSION='latest'"),
        ({"DATABASE_URL": "mysql://x/y"}, "DATABASE_URL must be"),
        ({"PIPELINE_STORE": "rocksdb"}, "PIPELINE_STORE='rocksdb'"),
        # A release cannot write a schema version it does not read (docs/schema-evolution.md).
        ({"PIPELINE_EVENT_WRITE_VERSION": "3"}, "PIPELINE_EVENT_WRITE_VERSION=3 is out of range"),
        (
            {"PIPELINE_KAFKA_PORT": "9000", "PIPELINE_KAFKA_CONTROLLER_PORT": "9000"},
            "must differ",
        ),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message.replace("(", r"\(")):
        load_settings(env)


def test_plain_database_urls_get_the_async_driver() -> None:
    assert normalize_database_url("postgresql://u@h/db") == "postgresql+asyncpg://u@h/db"
    assert normalize_database_url("postgres://u@h/db") == "postgresql+asyncpg://u@h/db"
    assert normalize_database_url("sqlite:///x.db") == "sqlite+aiosqlite:///x.db"


def test_the_api_token_never_shows_in_reprs() -> None:
    s = load_settings({"PIPELINE_API_TOKEN": "hunter2-secret"})
    assert s.api_token.get() == "hunter2-secret"
    assert "hunter2" not in repr(s)
    assert "hunter2" not in str(s.api_token)
    assert not Secret("")


@pytest.mark.parametrize(
    ("url", "password"),
    [
        ("postgresql://pipeline:db-pa55word@db.internal:5432/orders?sslmode=require", "pa55word"),
        ("postgresql://pipeline:p@ss%40word@db.internal/orders", "ss%40word"),
        ("postgresql+asyncpg://pipeline@db.internal/orders?password=qs-pa55word", "pa55word"),
        ("postgresql://:only-pa55word@db.internal/orders", "pa55word"),
    ],
)
def test_no_secret_shows_in_the_settings_repr(url: str, password: str) -> None:
    s = load_settings({
        "DATABASE_URL": url, "PIPELINE_API_TOKEN": "t0ken-value",
        "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "KAFKA_SASL_USERNAME": "pipeline",
        "KAFKA_SASL_PASSWORD": "sasl-pa55",
    })  # fmt: skip
    assert s.database_url == normalize_database_url(url)  # the real value, for use
    for shown in (repr(s), str(s), f"{s}", "%s" % (s,), f"{s!r}"):  # noqa: UP031
        for secret in (password, "t0ken-value", "sasl-pa55"):
            assert secret not in shown
        assert "db.internal" in shown  # it still says which database


def test_kafka_sasl_and_tls_settings_reach_every_client(tmp_path: Path) -> None:
    from pipeline.adapters.kafka.security import client_options, faust_credentials

    s = load_settings({
        "KAFKA_SECURITY_PROTOCOL": "sasl_ssl", "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "KAFKA_SASL_USERNAME": "pipeline", "KAFKA_SASL_PASSWORD": "s3cret-value",
    })  # fmt: skip
    options = client_options(s)
    assert options["security_protocol"] == "SASL_SSL"
    assert options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert options["sasl_plain_password"] == "s3cret-value"
    assert options["ssl_context"] is not None
    credentials = faust_credentials(s)
    assert credentials.mechanism.value == "SCRAM-SHA-512" and credentials.ssl_context is not None
    # The password is in no repr that could end up in a log or a traceback.
    assert "s3cret-value" not in repr(s) and "s3cret-value" not in str(s)
    plain = load_settings({})
    assert client_options(plain) == {"security_protocol": "PLAINTEXT"}
    assert faust_credentials(plain) is None


@pytest.mark.parametrize(
    ("env", "fault"),
    [
        ({"KAFKA_SECURITY_PROTOCOL": "TLS"}, "KAFKA_SECURITY_PROTOCOL"),
        ({"KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT"}, "KAFKA_SASL_USERNAME"),
        ({"KAFKA_SASL_MECHANISM": "GSSAPI"}, "KAFKA_SASL_MECHANISM"),
        ({"KAFKA_SSL_CAFILE": "/nonexistent/ca.pem"}, "KAFKA_SSL_CAFILE"),
        ({"PIPELINE_RETRY_DELAYS": "1,soon"}, "PIPELINE_RETRY_DELAYS"),
    ],
)
def test_bad_security_and_retry_settings_name_the_variable(env: dict[str, str], fault: str) -> None:
    with pytest.raises(SettingsError, match=fault):
        load_settings(env)


def test_the_commit_interval_reaches_faust() -> None:
    from pipeline.app import create_app

    assert load_settings({}).commit_interval_ms == 2800
    settings = load_settings({"PIPELINE_COMMIT_INTERVAL_MS": "250"})
    assert create_app(settings).conf.broker_commit_interval == 0.25


def test_every_bad_variable_is_reported_at_once() -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings({
            "PIPELINE_WEB_PORT": "http", "PIPELINE_PARTITIONS": "0",
            "PIPELINE_LOG_FORMAT": "xml", "PIPELINE_SMTP_PORT": "25",
        })  # fmt: skip
    # One line per variable, each saying what is expected.
    header, *lines = str(caught.value).splitlines()
    assert header == "3 settings cannot be used:"
    assert sorted(line.strip() for line in lines) == [
        "PIPELINE_LOG_FORMAT='xml' must be json or text",
        "PIPELINE_PARTITIONS=0 is out of range (1..1024)",
        "PIPELINE_WEB_PORT='http' is not an integer",
    ]


def test_a_rule_between_settings_is_reported_beside_a_bad_variable() -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings({
            "PIPELINE_KAFKA_PORT": "9000", "PIPELINE_KAFKA_CONTROLLER_PORT": "9000",
            "PIPELINE_DEDUPE_HORIZON_SECONDS": "10", "PIPELINE_WEB_PORT": "80",
        })  # fmt: skip
    problems = "\n".join(caught.value.problems)
    assert "must differ from PIPELINE_KAFKA_PORT" in problems
    assert "PIPELINE_DEDUPE_HORIZON_SECONDS=10 must be at least" in problems
    assert "PIPELINE_WEB_PORT=80 is out of range" in problems


def test_a_default_derived_from_a_bad_variable_is_not_reported_again() -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings({"PIPELINE_KAFKA_PORT": "port"})
    assert caught.value.problems == ("PIPELINE_KAFKA_PORT='port' is not an integer",)


@pytest.mark.parametrize(
    ("env", "instead"),
    [
        ({"PIPELINE_DEDUPE_WINDOW": "8"}, "set PIPELINE_DEDUPE_HORIZON_SECONDS"),
        ({"PIPELINE_PROCESSING_GUARANTEE": "exactly_once"}, "at-least-once"),
    ],
)
def test_a_retired_variable_still_set_is_refused_saying_what_replaces_it(
    env: dict[str, str], instead: str
) -> None:
    [name] = env
    with pytest.raises(SettingsError) as caught:
        load_settings({**env, "PIPELINE_WEB_PORT": "80"})
    # Reported beside the other problems, each on its own line.
    [retired] = [p for p in caught.value.problems if p.startswith(name)]
    assert retired.startswith(f"{name} is no longer read: ") and instead in retired
    assert any(p.startswith("PIPELINE_WEB_PORT=80") for p in caught.value.problems)
    # Set but blank, it asks for nothing.
    assert load_settings({name: " "}).dedupe_horizon_seconds == 300


def test_a_blank_variable_means_its_default_except_where_empty_is_a_value() -> None:
    s = load_settings({"PIPELINE_PARTITIONS": "", "PIPELINE_WEB_HOST": "  "})
    assert s.partitions == 4 and s.web_host == "127.0.0.1"
    assert load_settings({"PIPELINE_RETRY_DELAYS": ""}).retry_delays == ()


def test_every_setting_is_declared_once_with_a_doc() -> None:
    assert all("setting" in f.metadata for f in fields(Settings)), "declare fields with setting()"
    variables = [spec.env for _, spec in declared() if spec.env is not None]
    assert len(variables) == len(set(variables)), "a variable is declared twice"
    for f, spec in declared():
        # One line of the table: no line break, no cell separator.
        assert spec.doc.strip() and "\n" not in spec.doc and "|" not in spec.doc, f.name
        assert (spec.env is None) == (spec.reader is None), f.name
        # Derived from a variable, or a value that @dataclass gives to Settings(...) too.
        assert spec.env is not None or isinstance(spec.default, Derived), f.name


def test_the_declared_default_is_the_value_when_nothing_is_set() -> None:
    loaded = load_settings({})
    for f, spec in declared():
        if not isinstance(spec.default, Derived):
            assert getattr(loaded, f.name) == spec.default == f.default, f.name


@pytest.mark.parametrize(
    ("host", "url"),
    [
        ("127.0.0.1", "http://127.0.0.1:6066"),
        ("10.1.2.3", "http://10.1.2.3:6066"),
        ("::1", "http://[::1]:6066"),
        ("fd00::5", "http://[fd00::5]:6066"),
        ("0.0.0.0", "http://127.0.0.1:6066"),  # a wildcard bind is reached on loopback
        ("::", "http://[::1]:6066"),
        ("localhost", "http://localhost:6066"),
        ("worker-1.internal", "http://worker-1.internal:6066"),
    ],
)
def test_local_url_is_how_this_machine_reaches_the_worker(host: str, url: str) -> None:
    assert load_settings({"PIPELINE_WEB_HOST": host}).local_url() == url


def test_local_url_takes_the_port_the_worker_really_serves_on() -> None:
    s = load_settings({"PIPELINE_WEB_HOST": "::", "PIPELINE_WEB_PORT": "7000"})
    assert s.local_url() == "http://[::1]:7000"
    assert s.local_url(7003) == "http://[::1]:7003"


def test_a_checkout_keeps_its_cache_in_its_own_dot_cache() -> None:
    from pipeline import settings

    assert settings.SOURCE_CHECKOUT  # the tests run from the clone
    assert load_settings({}).cache_dir == settings.PROJECT_ROOT / ".cache"


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"XDG_CACHE_HOME": "/var/cache/u"}, "/var/cache/u/orders-pipeline"),
        ({"HOME": "/home/u"}, "/home/u/.cache/orders-pipeline"),
        # The XDG spec ignores a relative XDG_CACHE_HOME.
        ({"HOME": "/home/u", "XDG_CACHE_HOME": "rel"}, "/home/u/.cache/orders-pipeline"),
        ({"HOME": "/home/u", "PIPELINE_CACHE_DIR": "/srv/c"}, "/srv/c"),
    ],
)
def test_an_installed_package_caches_in_the_users_cache_dir(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], expected: str
) -> None:
    from pipeline import settings

    monkeypatch.setattr(settings, "SOURCE_CHECKOUT", False)
    cache = load_settings(env).cache_dir
    assert cache == Path(expected)
    assert not cache.is_relative_to(settings.PROJECT_ROOT)


def test_outbox_topics_are_names_or_prefixes() -> None:
    s = load_settings({"PIPELINE_OUTBOX_TOPICS": " payments.events, audit.* ,"})
    assert s.outbox_topics == ("payments.events", "audit.*")
    assert load_settings({}).outbox_topics == ()
    with pytest.raises(SettingsError, match="PIPELINE_OUTBOX_TOPICS: 'bad topic' is not a Kafka"):
        load_settings({"PIPELINE_OUTBOX_TOPICS": "ok.events,bad topic"})


def test_only_this_projects_pyproject_makes_a_checkout(tmp_path: Path) -> None:
    from pipeline.settings import _is_checkout

    assert not _is_checkout(tmp_path)
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "something-else"\n')
    assert not _is_checkout(tmp_path)  # a stray file some wheel left in site-packages
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "orders-pipeline"\n')
    assert _is_checkout(tmp_path)


@pytest.mark.parametrize(
    ("env", "url"),
    [
        ({}, "http://127.0.0.1:6066"),
        ({"PIPELINE_WEB_HOST": "10.1.2.3", "PIPELINE_WEB_PORT": "7000"}, "http://10.1.2.3:7000"),
        ({"PIPELINE_WEB_HOST": "fd00::5"}, "http://[fd00::5]:6066"),
        ({"PIPELINE_WEB_HOST": "0.0.0.0"}, f"http://{socket.gethostname()}:6066"),
        ({"PIPELINE_WEB_HOST": "::"}, f"http://{socket.gethostname()}:6066"),
        (
            {"PIPELINE_WEB_HOST": "0.0.0.0", "PIPELINE_WEB_ADVERTISED_URL": "http://10.0.0.5:80/"},
            "http://10.0.0.5:80",
        ),
    ],
)
def test_the_advertised_url_is_never_a_bind_all_address(env: dict[str, str], url: str) -> None:
    assert load_settings(env).advertised_url() == url


def test_a_derived_advertised_url_takes_the_port_and_host_faust_serves_on() -> None:
    s = load_settings({"PIPELINE_WEB_HOST": "0.0.0.0"})
    assert s.advertised_url(7003) == f"http://{socket.gethostname()}:7003"
    assert s.advertised_url(7003, "worker-2.internal") == "http://worker-2.internal:7003"
    given = load_settings({"PIPELINE_WEB_ADVERTISED_URL": "https://w-1.svc:8443"})
    assert given.advertised_url(7003, "0.0.0.0") == "https://w-1.svc:8443"  # as the user said


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        ("10.0.0.5:6066", "http or https, with a host"),
        ("ftp://10.0.0.5", "http or https, with a host"),
        ("http://:6066", "http or https, with a host"),
        ("http://0.0.0.0:6066", "0.0.0.0 is a bind-all address"),
        ("http://[::]:6066", ":: is a bind-all address"),
        ("http://10.0.0.5:6066/api", "no user, path, query or fragment"),
        ("http://user:pw@10.0.0.5:6066", "no user, path, query or fragment"),
        ("http://10.0.0.5:70000", "bad host or port"),
        ("http://10.0.0.5:0", "port 0"),
        ("http://worker 1:6066", "no spaces"),
    ],
)
def test_a_bad_advertised_url_is_refused_naming_the_setting(raw: str, why: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings({"PIPELINE_WEB_ADVERTISED_URL": raw})
    assert str(caught.value).startswith("PIPELINE_WEB_ADVERTISED_URL=")
    assert why in str(caught.value)
