from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.settings import Secret, SettingsError, load_settings, normalize_database_url


def test_defaults_run_locally_on_embedded_storage(tmp_path: Path) -> None:
    s = load_settings({"PIPELINE_DATA_DIR": str(tmp_path)})
    assert s.kafka_bootstrap_servers == "127.0.0.1:9092"
    assert not s.kafka_external
    assert s.database_url == f"sqlite+aiosqlite:///{tmp_path / 'pipeline.db'}"
    assert s.store == "rocksdb://"
    assert s.web_host == "127.0.0.1" and s.web_is_loopback
    assert s.kafka_data_dir == tmp_path / "kafka"
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
        ({"PIPELINE_KAFKA_VERSION": "latest"}, "PIPELINE_KAFKA_VERSION='latest'"),
        ({"DATABASE_URL": "mysql://x/y"}, "DATABASE_URL must be"),
        ({"PIPELINE_STORE": "rocksdb"}, "PIPELINE_STORE='rocksdb'"),
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
