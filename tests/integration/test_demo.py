"""`make demo`: a real broker and workers that process events, and a clean stop."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from pipeline.local.kafka import port_is_free
from pipeline.settings import PROJECT_ROOT
from tests.integration.workers import free_port


def _demo_env(tmp_path: Path, kafka_version: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIPELINE_", "KAFKA_"))}
    env.pop("DATABASE_URL", None)
    env.update(
        PIPELINE_DATA_DIR=str(tmp_path),
        PIPELINE_KAFKA_PORT=str(free_port()),
        PIPELINE_KAFKA_CONTROLLER_PORT=str(free_port()),
        PIPELINE_KAFKA_VERSION=kafka_version,
        PIPELINE_KAFKA_HEAP="512m",
        PIPELINE_WEB_PORT=str(free_port()),
        PIPELINE_CACHE_DIR=os.environ.get("PIPELINE_CACHE_DIR", str(PROJECT_ROOT / ".cache")),
        PYTHONUNBUFFERED="1",
    )
    return env


def _processed(line: str) -> float:
    """The "events processed N" figure of a live progress line, or 0."""
    match = re.search(r"events processed +([0-9.]+)", line)
    return float(match.group(1)) if match else 0.0


def _java_brokers_for(data_dir: Path) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if "kafka.Kafka" in cmdline and str(data_dir) in cmdline:
                found.append(proc.name)
    return found


def test_demo_processes_orders_and_stops_everything_on_ctrl_c(
    tmp_path: Path, kafka_version: str
) -> None:
    env = _demo_env(tmp_path, kafka_version)
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "demo", "--workers", "2", "--rate", "40"],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + 180
    # Wait until the live progress shows events the agents processed from generated orders.
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if _processed(line) > 0:
            break
    if not any(_processed(ln) > 0 for ln in lines):
        proc.kill()
        logs = "".join(
            f"\n--- {log.name}\n{log.read_text(errors='replace')[-3000:]}"
            for log in sorted((tmp_path / "logs").glob("*.log"))
        )
        raise AssertionError("the demo showed no processed orders:\n" + "".join(lines) + logs)
    assert _java_brokers_for(tmp_path / "kafka"), "the demo should have started its own broker"
    [dashboard] = [ln.split()[1] for ln in lines if ln.startswith("dashboard: ")]
    with urllib.request.urlopen(dashboard, timeout=10) as resp:  # the URL it prints works
        assert resp.status == 200 and b"<html" in resp.read().lower()

    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=90)
    assert proc.returncode == 0, "".join(lines) + out
    assert "demo stopped" in out
    assert not _java_brokers_for(tmp_path / "kafka")
    assert port_is_free("127.0.0.1", int(env["PIPELINE_KAFKA_PORT"]))
    assert port_is_free("127.0.0.1", int(env["PIPELINE_WEB_PORT"]))


def test_demo_with_a_duration_exits_by_itself(
    tmp_path: Path, kafka_version: str, kafka_bootstrap: str
) -> None:
    env = _demo_env(tmp_path, kafka_version)
    env["KAFKA_BOOTSTRAP_SERVERS"] = kafka_bootstrap  # an existing cluster: nothing to start
    env["PIPELINE_TOPIC_PREFIX"] = f"demo{free_port()}."
    env["PIPELINE_APP_ID"] = f"demo-{free_port()}"
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "demo", "--workers", "1", "--duration", "6"],
        cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"using your Kafka at {kafka_bootstrap}" in result.stdout
    assert "stopping local Kafka" not in result.stdout
    assert not (tmp_path / "kafka").exists()
