"""The local broker's storage belongs to the release that formatted it (offline: no broker
is started, the refusal comes first)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.local.kafka import LocalKafka, LocalKafkaError
from pipeline.settings import load_settings


def _broker(data_dir: Path, version: str) -> LocalKafka:
    return LocalKafka(version=version, port=1, controller_port=2, data_dir=data_dir,
                      cache_dir=data_dir / "cache", heap="512m")  # fmt: skip


def test_storage_another_release_formatted_is_refused_in_one_line(tmp_path: Path) -> None:
    broker = _broker(tmp_path, "3.9.2")
    broker.release_file.write_text("4.4.0\n")
    with pytest.raises(LocalKafkaError) as refused:
        broker._check_release()
    message = str(refused.value)
    assert "\n" not in message
    assert "Kafka 4.4.0" in message and "Kafka 3.9.2" in message
    assert "PIPELINE_KAFKA_DATA_DIR" in message


def test_storage_of_the_same_release_or_never_formatted_is_used(tmp_path: Path) -> None:
    _broker(tmp_path / "fresh", "3.9.2")._check_release()
    same = _broker(tmp_path, "3.9.2")
    same.release_file.write_text("3.9.2\n")
    same._check_release()


def test_each_release_gets_its_own_default_directory(tmp_path: Path) -> None:
    base = {"PIPELINE_DATA_DIR": str(tmp_path)}
    old = load_settings({**base, "PIPELINE_KAFKA_VERSION": "3.9.2"})
    new = load_settings({**base, "PIPELINE_KAFKA_VERSION": "4.4.0"})
    assert old.kafka_data_dir != new.kafka_data_dir
    assert old.kafka_data_dir.parent == new.kafka_data_dir.parent == tmp_path / "kafka"
