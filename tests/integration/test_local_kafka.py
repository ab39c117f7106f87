"""The local broker the project starts for itself: real Apache Kafka from Maven jars."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.local.kafka import LocalKafka, LocalKafkaError, broker_answers, port_is_free
from pipeline.settings import PROJECT_ROOT
from tests.integration.workers import free_port

CACHE = Path(os.environ.get("PIPELINE_CACHE_DIR", PROJECT_ROOT / ".cache"))


def _broker(tmp_path: Path, version: str) -> LocalKafka:
    return LocalKafka(
        version=version,
        port=free_port(),
        controller_port=free_port(),
        data_dir=tmp_path / "kafka",
        cache_dir=CACHE,
        heap="512m",
    )


def test_start_is_reentrant_and_stop_is_clean(tmp_path: Path, kafka_version: str) -> None:
    broker = _broker(tmp_path, kafka_version)
    # A pid file left by a broker that died is not mistaken for a running one.
    broker.data_dir.mkdir(parents=True)
    broker.pid_file.write_text("999999")
    try:
        assert broker.start() == broker.bootstrap_servers
        pid = broker.running_pid()
        assert pid is not None
        assert broker.start() == broker.bootstrap_servers  # reused, not a second process
        assert broker.running_pid() == pid
        assert broker_answers(broker.bootstrap_servers)
        assert broker.release_file.read_text().strip() == kafka_version
    finally:
        assert broker.stop()
    assert broker.running_pid() is None
    assert port_is_free("127.0.0.1", broker.port)
    assert not broker.stop()  # stopping a stopped broker is fine


def test_a_port_in_use_is_a_clear_error_not_a_hang(tmp_path: Path, kafka_version: str) -> None:
    broker = _broker(tmp_path, kafka_version)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", broker.port))
        squatter.listen()
        started = time.monotonic()
        with pytest.raises(LocalKafkaError, match=f"port {broker.port} .* already in use"):
            broker.start()
        assert time.monotonic() - started < 5
    assert broker.running_pid() is None


def test_kafka_commands_start_nothing_for_an_existing_cluster(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    env = {
        "PATH": os.environ["PATH"],
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "PIPELINE_DATA_DIR": str(tmp_path),
    }
    for action in ("up", "status", "down"):
        result = subprocess.run(
            [sys.executable, "-m", "pipeline", "kafka", action],
            cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert "nothing started or stopped" in result.stdout
    assert not (tmp_path / "kafka").exists()


def test_kafka_up_and_down_commands(tmp_path: Path, kafka_version: str) -> None:
    env = {
        "PATH": os.environ["PATH"],
        "PIPELINE_DATA_DIR": str(tmp_path),
        "PIPELINE_KAFKA_PORT": str(free_port()),
        "PIPELINE_KAFKA_CONTROLLER_PORT": str(free_port()),
        "PIPELINE_KAFKA_VERSION": kafka_version,
        "PIPELINE_KAFKA_HEAP": "512m",
        "PIPELINE_CACHE_DIR": str(CACHE),
    }

    def run(action: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "pipeline", "kafka", action],
            cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=180, check=False,
        )  # fmt: skip

    up = run("up")
    try:
        assert up.returncode == 0, up.stderr
        assert up.stdout.strip() == f"127.0.0.1:{env['PIPELINE_KAFKA_PORT']}"
        assert run("status").returncode == 0
    finally:
        down = run("down")
    assert down.returncode == 0 and down.stdout.strip() == "stopped"
    assert run("status").returncode == 1
