"""A private PostgreSQL server for tests and local runs, from Debian's packages.

It is a cluster of our own (``initdb`` into its own directory, listening on 127.0.0.1 and a
port of our choosing, its socket inside its data directory), not the system's cluster: tests
can stop it in immediate mode and restart it without touching anything else on the machine.
When no PostgreSQL server binaries are installed and we run as root, ``ensure_installed``
installs Debian's ``postgresql`` package.

Authentication is ``trust`` for the ``pipeline`` superuser on loopback only: this cluster is
disposable and holds test data. Point ``DATABASE_URL`` at a real server for anything else.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

SUPERUSER = "pipeline"
_DB_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


class LocalPostgresError(RuntimeError):
    """The local PostgreSQL could not be provided; the message says why and what to do."""


def find_bin_dir() -> Path | None:
    """The bin directory of the newest installed PostgreSQL server, if any."""
    candidates = []
    for pg_ctl in Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"):
        try:
            candidates.append((int(pg_ctl.parent.parent.name), pg_ctl.parent))
        except ValueError:
            continue
    if candidates:
        return max(candidates)[1]
    found = shutil.which("pg_ctl")
    return Path(found).parent if found else None


def ensure_installed() -> Path:
    """Return the server's bin directory, installing Debian's package when missing."""
    bin_dir = find_bin_dir()
    if bin_dir is not None:
        return bin_dir
    if os.geteuid() != 0:
        raise LocalPostgresError(
            "PostgreSQL server binaries not found; install them (Debian: sudo apt-get install -y "
            "postgresql) or set DATABASE_URL to an existing server"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (
        ["apt-get", "update"],
        ["apt-get", "install", "-y", "--no-install-recommends", "postgresql"],
    ):
        result = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise LocalPostgresError(
                f"{' '.join(cmd)} failed (exit {result.returncode}):\n{result.stderr[-2000:]}"
            )
    bin_dir = find_bin_dir()
    if bin_dir is None:
        raise LocalPostgresError("installed the postgresql package but found no pg_ctl")
    return bin_dir


def default_data_dir(port: int, cache_dir: Path) -> Path:
    # The server refuses to run as root, so as root it runs as the ``postgres`` user, which
    # must be able to reach its data directory: a checkout under a private home may not be.
    if os.geteuid() == 0:
        return Path(f"/var/tmp/orders-pipeline-postgres-{port}")  # noqa: S108 - owned 0700 by postgres
    return cache_dir / f"postgres-{port}"


@dataclass(frozen=True)
class LocalPostgres:
    port: int
    data_dir: Path
    host: str = "127.0.0.1"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+asyncpg://{SUPERUSER}@{self.host}:{self.port}/{database}"

    def dsn(self, database: str = "postgres") -> str:
        """A plain libpq/asyncpg DSN (no SQLAlchemy driver prefix)."""
        return f"postgresql://{SUPERUSER}@{self.host}:{self.port}/{database}"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "server.log"

    def _run(
        self, *args: str, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        cmd = list(args)
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        if check and result.returncode != 0:
            raise LocalPostgresError(
                f"{' '.join(args[:2])} failed (exit {result.returncode}):\n"
                + (result.stdout + result.stderr).strip()[-2000:]
            )
        return result

    def _init(self, bin_dir: Path) -> None:
        if (self.data_dir / "PG_VERSION").exists():
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.data_dir, "postgres", "postgres")
        self.data_dir.chmod(0o700)
        self._run(
            str(bin_dir / "initdb"),
            "-D", str(self.data_dir),
            "-U", SUPERUSER,
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C.UTF-8",
        )  # fmt: skip
        conf = self.data_dir / "postgresql.conf"
        with conf.open("a") as f:
            f.write(
                "\n# orders-pipeline local cluster\n"
                f"listen_addresses = '{self.host}'\n"
                f"port = {self.port}\n"
                f"unix_socket_directories = '{self.data_dir}'\n"
                "max_connections = 200\n"
                "shared_buffers = 256MB\n"
            )

    def is_running(self) -> bool:
        bin_dir = find_bin_dir()
        if bin_dir is None or not (self.data_dir / "PG_VERSION").exists():
            return False
        status = self._run(str(bin_dir / "pg_ctl"), "status", "-D", str(self.data_dir), check=False)
        return status.returncode == 0

    def start(self, timeout: float = 60) -> str:
        """Install if needed, create the cluster on first use, start it; return its URL."""
        bin_dir = ensure_installed()
        self._init(bin_dir)
        if not self.is_running():
            self._run(
                str(bin_dir / "pg_ctl"), "start", "-w", "-t", str(int(timeout)),
                "-D", str(self.data_dir), "-l", str(self.log_file),
                # After a crash (the fault tests stop it in immediate mode) the server fsyncs
                # its data directory file by file before recovering: seconds per thousand
                # databases. One syncfs of the file system is the same guarantee, at once.
                "-o", "-c recovery_init_sync_method=syncfs",
                timeout=timeout + 10,
            )  # fmt: skip
        self.wait_ready(timeout)
        return self.url()

    def wait_ready(self, timeout: float = 60) -> None:
        bin_dir = find_bin_dir()
        assert bin_dir is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready = subprocess.run(
                [str(bin_dir / "pg_isready"), "-h", self.host, "-p", str(self.port), "-q"],
                check=False,
            )
            if ready.returncode == 0:
                return
            time.sleep(0.2)
        raise LocalPostgresError(f"PostgreSQL on {self.host}:{self.port} did not become ready")

    def stop(self, mode: str = "fast") -> None:
        """Stop the server; ``mode='immediate'`` is a crash as far as the database knows."""
        bin_dir = find_bin_dir()
        if bin_dir is None or not self.is_running():
            return
        self._run(str(bin_dir / "pg_ctl"), "stop", "-w", "-m", mode, "-D", str(self.data_dir))

    def _psql(self, name: str) -> list[str]:
        if not _DB_NAME.match(name):
            raise LocalPostgresError(f"invalid database name {name!r}")
        bin_dir = find_bin_dir()
        assert bin_dir is not None
        return [
            str(bin_dir / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1",
            "-h", self.host, "-p", str(self.port), "-U", SUPERUSER, "-d", "postgres",
        ]  # fmt: skip

    def drop_database(self, name: str) -> None:
        """Drop database ``name`` if it exists, its sessions ended first."""
        # An identifier cannot be a bound parameter; _psql matched the name to _DB_NAME.
        self._run(*self._psql(name), "-c", f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def create_database(self, name: str, *, drop_existing: bool = False) -> str:
        """Create database ``name`` (if missing) and return its SQLAlchemy URL."""
        psql = self._psql(name)
        # An identifier cannot be a bound parameter; _psql matched the name to _DB_NAME.
        if drop_existing:
            self._run(*psql, "-c", f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        created = self._run(*psql, "-c", f'CREATE DATABASE "{name}"', check=False)
        if created.returncode != 0 and "already exists" not in created.stderr:
            raise LocalPostgresError(f"CREATE DATABASE {name} failed: {created.stderr.strip()}")
        return self.url(name)
