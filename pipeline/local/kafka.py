"""A real Apache Kafka broker on this machine, from jars resolved through Maven.

No Docker and no tarball: ``pom.xml`` beside this module names ``org.apache.kafka:kafka_2.13``
and ``mvn dependency:copy-dependencies`` puts its jars in ``<cache>/kafka/<version>/libs``
once per version. The broker runs in KRaft mode as a single node (broker and controller)
bound to 127.0.0.1, with replication factor 1 for its internal and transaction-state topics
so that idempotent producers and transactions work on one node.

Guarantees: ``start`` returns only when the broker answers a metadata request; a broker of
ours already running is reused; a port held by anything else, or a broker that dies while
starting, raises :class:`LocalKafkaError` with what to do, instead of hanging.
"""

from __future__ import annotations

import asyncio
import base64
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipeline.settings import Settings

POM = Path(__file__).with_name("pom.xml")

LOG4J2_CONFIG = """\
Configuration:
  name: local-kafka
  Appenders:
    File:
      name: file
      fileName: "{log}"
      PatternLayout:
        pattern: "[%d] %p %m (%c)%n"
  Loggers:
    Root:
      level: INFO
      AppenderRef:
        - ref: file
    Logger:
      - name: kafka.request.logger
        level: WARN
      - name: org.apache.kafka.controller
        level: INFO
"""

LOG4J1_CONFIG = """\
log4j.rootLogger=INFO, file
log4j.appender.file=org.apache.log4j.FileAppender
log4j.appender.file.File={log}
log4j.appender.file.layout=org.apache.log4j.PatternLayout
log4j.appender.file.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka.request.logger=WARN
"""


class LocalKafkaError(RuntimeError):
    """The local broker could not be provided; the message says why and what to do."""


@dataclass(frozen=True)
class LocalKafka:
    """One local single-node KRaft broker: where its jars, data and ports are."""

    version: str
    port: int
    controller_port: int
    data_dir: Path
    cache_dir: Path
    heap: str = "1G"
    host: str = "127.0.0.1"
    # A node of a local cluster (tests): its id, every node's "id@host:controller_port", the
    # cluster id they share, and the replication the cluster's internal topics get.
    node_id: int = 1
    voters: str = ""
    cluster_id: str = ""
    replication: int = 1
    # SASL/PLAIN users (name -> password) of a broker whose client listener authenticates
    # (tests of the Kafka security settings); the first user is the broker's own.
    sasl_users: tuple[tuple[str, str], ...] = ()

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def libs_dir(self) -> Path:
        return self.cache_dir / "kafka" / self.version / "libs"

    @property
    def pid_file(self) -> Path:
        return self.data_dir / "kafka.pid"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "server.log"

    @property
    def line(self) -> int:
        return int(self.version.split(".", 1)[0])

    # -- jars ---------------------------------------------------------------------------------

    def ensure_jars(self) -> Path:
        """Resolve the broker's jars from Maven Central once per version."""
        marker = self.libs_dir / ".complete"
        if marker.exists():
            return self.libs_dir
        if shutil.which("mvn") is None:
            raise LocalKafkaError(
                "Maven (mvn) is not on PATH; install it (Debian: apt-get install -y maven) "
                "or point KAFKA_BOOTSTRAP_SERVERS at an existing cluster"
            )
        tmp = self.libs_dir.with_name("libs.partial")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        # Maven runs on a copy: its project directory (where it may write) is then the cache,
        # never the installed package.
        pom = tmp.with_name("pom.xml")
        shutil.copyfile(POM, pom)
        cmd = [
            "mvn",
            "-B",
            "-q",
            "-f",
            str(pom),
            "dependency:copy-dependencies",
            f"-Dkafka.version={self.version}",
            f"-Dkafka.line={self.line}",
            f"-DoutputDirectory={tmp}",
        ]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
        jar = tmp / f"kafka_2.13-{self.version}.jar"
        if result.returncode != 0 or not jar.exists():
            detail = (result.stdout + result.stderr).strip().splitlines()[-15:]
            raise LocalKafkaError(
                f"could not resolve org.apache.kafka:kafka_2.13:{self.version} from Maven "
                f"Central (mvn exit {result.returncode}):\n" + "\n".join(detail)
            )
        shutil.rmtree(self.libs_dir, ignore_errors=True)
        tmp.rename(self.libs_dir)
        marker.touch()
        return self.libs_dir

    # -- configuration ------------------------------------------------------------------------

    def _server_properties(self) -> str:
        min_isr = 2 if self.replication >= 3 else 1
        lines = {
            "process.roles": "broker,controller",
            "node.id": str(self.node_id),
            "controller.quorum.voters": self.voters or f"1@{self.host}:{self.controller_port}",
            "listeners": f"PLAINTEXT://{self.host}:{self.port},"
            f"CONTROLLER://{self.host}:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://{self.host}:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            **self._sasl_properties(),
            "log.dirs": str(self.data_dir / "logs"),
            "num.partitions": "4",
            "default.replication.factor": str(self.replication),
            "min.insync.replicas": str(min_isr),
            "offsets.topic.replication.factor": str(self.replication),
            "offsets.topic.num.partitions": "10",
            "transaction.state.log.replication.factor": str(self.replication),
            "transaction.state.log.min.isr": str(min_isr),
            "transaction.state.log.num.partitions": "10",
            "group.initial.rebalance.delay.ms": "0",
            "auto.create.topics.enable": "true",
            "delete.topic.enable": "true",
            "log.retention.hours": "168",
            "log.segment.bytes": str(256 * 1024 * 1024),
            "num.network.threads": "2",
            "num.io.threads": "4",
        }
        if self.line >= 4:
            lines["share.coordinator.state.topic.replication.factor"] = str(self.replication)
            lines["share.coordinator.state.topic.min.isr"] = str(min_isr)
        return "".join(f"{k}={v}\n" for k, v in lines.items())

    def _sasl_properties(self) -> dict[str, str]:
        if not self.sasl_users:
            return {}
        (admin, admin_password), *_ = self.sasl_users
        users = " ".join(f'user_{name}="{password}"' for name, password in self.sasl_users)
        return {
            "listeners": f"SASL_PLAINTEXT://{self.host}:{self.port},"
            f"CONTROLLER://{self.host}:{self.controller_port}",
            "advertised.listeners": f"SASL_PLAINTEXT://{self.host}:{self.port}",
            "inter.broker.listener.name": "SASL_PLAINTEXT",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT",
            "sasl.enabled.mechanisms": "PLAIN",
            "sasl.mechanism.inter.broker.protocol": "PLAIN",
            "listener.name.sasl_plaintext.plain.sasl.jaas.config": (
                "org.apache.kafka.common.security.plain.PlainLoginModule required "
                f'username="{admin}" password="{admin_password}" {users};'
            ),
        }

    def client_security(self) -> dict[str, Any]:
        """aiokafka options to talk to this broker (its first SASL user)."""
        if not self.sasl_users:
            return {}
        name, password = self.sasl_users[0]
        return {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN",
                "sasl_plain_username": name, "sasl_plain_password": password}  # fmt: skip

    def _write_config(self) -> Path:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        props = self.data_dir / "server.properties"
        props.write_text(self._server_properties())
        (self.data_dir / "log4j2.yaml").write_text(LOG4J2_CONFIG.format(log=self.log_file))
        (self.data_dir / "log4j.properties").write_text(LOG4J1_CONFIG.format(log=self.log_file))
        return props

    def _java(self, main: str, *args: str) -> list[str]:
        java_home = os.environ.get("JAVA_HOME")
        java = str(Path(java_home) / "bin" / "java") if java_home else shutil.which("java")
        if not java:
            raise LocalKafkaError("Java 17 or newer is needed for the local broker: java not found")
        return [
            java,
            f"-Xmx{self.heap}",
            "-Xms256m",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.data_dir / 'log4j2.yaml'}",
            f"-Dlog4j.configuration=file:{self.data_dir / 'log4j.properties'}",
            f"-Dkafka.logs.dir={self.data_dir}",
            "-cp",
            f"{self.libs_dir}/*",
            main,
            *args,
        ]

    @property
    def release_file(self) -> Path:
        """Which Kafka release formatted this data directory (written when formatting)."""
        return self.data_dir / "kafka-release"

    def _check_release(self) -> None:
        """Refuse, in one line, storage another release formatted: Kafka 3.9 dies with a Java
        stack trace ("Can't read version 4 of BrokerEndpoint") on what 4.x formatted."""
        try:
            formatted_by = self.release_file.read_text().strip()
        except FileNotFoundError:
            return
        if formatted_by != self.version:
            raise LocalKafkaError(
                f"{self.data_dir} holds the storage of Kafka {formatted_by}, which Kafka "
                f"{self.version} cannot read; unset PIPELINE_KAFKA_DATA_DIR (each release gets "
                f"its own directory) or point it at an empty directory"
            )

    def _format_storage(self, props: Path) -> None:
        if (self.data_dir / "logs" / "meta.properties").exists():
            return
        cluster_id = self.cluster_id or new_cluster_id()
        cmd = self._java(
            "kafka.tools.StorageTool",
            "format",
            f"--cluster-id={cluster_id}",
            "--config",
            str(props),
        )
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
        if result.returncode != 0:
            raise LocalKafkaError(
                f"formatting Kafka storage in {self.data_dir} failed:\n"
                + (result.stdout + result.stderr).strip()[-2000:]
            )
        self.release_file.write_text(self.version + "\n")

    # -- lifecycle ----------------------------------------------------------------------------

    def running_pid(self) -> int | None:
        """The pid of our broker if it is alive, else None (a stale pid file is removed)."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        if _alive(pid) and _is_our_broker(pid, self.data_dir):
            return pid
        self.pid_file.unlink(missing_ok=True)
        return None

    def start(self, timeout: float = 90.0, *, wait: bool = True) -> str:
        """Start the broker (or reuse ours) and return its bootstrap address once it answers
        (at once with ``wait=False``: a cluster's nodes answer only once a quorum is up)."""
        pid = self.running_pid()
        if pid is not None:
            if broker_answers(self.bootstrap_servers, timeout=timeout, **self.client_security()):
                return self.bootstrap_servers
            raise LocalKafkaError(
                f"a local broker (pid {pid}) is running from {self.data_dir} but does not "
                f"answer on {self.bootstrap_servers}; run `make kafka-down` and try again"
            )
        for port, what in (
            (self.port, "PIPELINE_KAFKA_PORT"),
            (self.controller_port, "PIPELINE_KAFKA_CONTROLLER_PORT"),
        ):
            if not port_is_free(self.host, port):
                raise LocalKafkaError(
                    f"port {port} on {self.host} is already in use by another process; stop it "
                    f"or choose another port with {what}"
                )
        self._check_release()
        self.ensure_jars()
        props = self._write_config()
        self._format_storage(props)
        stdout = open(self.data_dir / "kafka.out", "ab")  # noqa: SIM115 - owned by the child
        proc = subprocess.Popen(
            self._java("kafka.Kafka", str(props)),
            stdout=stdout,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        stdout.close()
        self.pid_file.write_text(str(proc.pid))
        if not wait:
            return self.bootstrap_servers
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                self.pid_file.unlink(missing_ok=True)
                raise LocalKafkaError(
                    f"the local broker exited with code {proc.returncode} while starting; "
                    f"last lines of {self.log_file}:\n{self._log_tail()}"
                )
            if broker_answers(self.bootstrap_servers, timeout=2.0, **self.client_security()):
                return self.bootstrap_servers
            time.sleep(0.3)
        self.stop()
        raise LocalKafkaError(
            f"the local broker did not answer on {self.bootstrap_servers} within {timeout:.0f}s; "
            f"last lines of {self.log_file}:\n{self._log_tail()}"
        )

    def stop(self, timeout: float = 30.0) -> bool:
        """Stop our broker cleanly (SIGTERM, then SIGKILL after ``timeout``)."""
        pid = self.running_pid()
        if pid is None:
            return False
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.2)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
            while _alive(pid):
                time.sleep(0.1)
        self.pid_file.unlink(missing_ok=True)
        return True

    def _log_tail(self, lines: int = 25) -> str:
        for path in (self.log_file, self.data_dir / "kafka.out"):
            if path.exists() and path.stat().st_size:
                return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        return "(no log output)"


def new_cluster_id() -> str:
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours counts as gone.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][:1] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def _is_our_broker(pid: int, data_dir: Path) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except FileNotFoundError:
        return False
    return "kafka.Kafka" in cmdline and str(data_dir) in cmdline


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def broker_answers(bootstrap_servers: str, timeout: float = 5.0, **security: Any) -> bool:
    """True when a broker at ``bootstrap_servers`` answers a metadata request in time."""
    host, _, port = bootstrap_servers.split(",")[0].rpartition(":")
    try:
        # A cheap TCP probe first keeps the client from logging a refused connection per try.
        socket.create_connection((host, int(port)), timeout=min(timeout, 2.0)).close()
    except OSError:
        return False
    return asyncio.run(_metadata_ok(bootstrap_servers, timeout_s=timeout, **security))


async def _metadata_ok(bootstrap_servers: str, *, timeout_s: float, **security: Any) -> bool:
    from aiokafka import AIOKafkaClient
    from aiokafka.errors import KafkaError

    client = AIOKafkaClient(
        bootstrap_servers=bootstrap_servers, request_timeout_ms=int(timeout_s * 1000), **security
    )
    try:
        await asyncio.wait_for(client.bootstrap(), timeout_s)
        return bool(client.cluster.brokers())
    except (TimeoutError, KafkaError, OSError):
        return False
    finally:
        await client.close()


def from_settings(settings: Settings) -> LocalKafka:
    """The local broker these settings describe (``PIPELINE_KAFKA_*``)."""
    return LocalKafka(
        version=settings.kafka_version,
        port=settings.kafka_port,
        controller_port=settings.kafka_controller_port,
        data_dir=settings.kafka_data_dir,
        cache_dir=settings.cache_dir,
        heap=settings.kafka_heap,
    )
