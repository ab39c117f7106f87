"""What a worker checks before it serves anything, tried with real processes as a user would
start them: every entry point (``python -m pipeline``, Faust's own ``faust -A``, the
``orders-pipeline`` script) and every way Faust accepts a web binding (``-b0.0.0.0``,
``--web-bind`` after a global option, ``WEB_BIND`` in the environment).

A worker that would be reachable from other machines without ``PIPELINE_API_TOKEN`` exits
non-zero with a message saying what to do, and never listens, not even briefly: the tests
watch the kernel's socket table (``/proc/net/tcp*``) for the port while the process runs. Only
loopback and the wildcard address are bound here, and traffic goes to loopback only.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.adapters.db.schema import migrate
from pipeline.settings import PROJECT_ROOT
from tests.integration.workers import WorkerFactory, free_port, http_get, wait_for

BIN = Path(sys.executable).parent
PY = sys.executable

# What a user types, with {port} for the web port; then the environment it adds.
OPEN_BINDS: dict[str, tuple[str, dict[str, str]]] = {
    "python -m pipeline worker -b0.0.0.0": (
        "{py} -m pipeline worker -l info --web-port {port} -b0.0.0.0",
        {},
    ),
    "python -m pipeline --debug worker --web-bind 0.0.0.0": (
        "{py} -m pipeline --debug worker -l info --web-port {port} --web-bind 0.0.0.0",
        {},
    ),
    "WEB_BIND=0.0.0.0 python -m pipeline worker": (
        "{py} -m pipeline worker -l info --web-port {port}",
        {"WEB_BIND": "0.0.0.0"},
    ),
    "faust -A pipeline.app worker --web-bind 0.0.0.0": (
        "{bin}/faust -A pipeline.app worker -l info --web-port {port} --web-bind 0.0.0.0",
        {},
    ),
    "orders-pipeline worker --web-bind=0.0.0.0": (
        "{bin}/orders-pipeline worker -l info --web-port {port} --web-bind=0.0.0.0",
        {},
    ),
    "PIPELINE_WEB_HOST=0.0.0.0 python -m pipeline worker": (
        "{py} -m pipeline worker -l info --web-port {port}",
        {"PIPELINE_WEB_HOST": "0.0.0.0"},
    ),
    "PIPELINE_WEB_HOST=0.0.0.0 python -m pipeline forwarder": (
        "{py} -m pipeline forwarder --web-port {port}",
        {"PIPELINE_WEB_HOST": "0.0.0.0"},
    ),
}


def command(entry: str, port: int) -> tuple[list[str], dict[str, str]]:
    line, env = OPEN_BINDS[entry]
    return line.format(py=PY, bin=BIN, port=port).split(), env


def listeners(port: int) -> set[str]:
    """The local addresses (hex, as the kernel shows them) listening on TCP ``port``."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            address, hex_port = fields[1].rsplit(":", 1)
            if fields[3] == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                found.add(address)
    return found


WILDCARDS = {"00000000", "00000000000000000000000000000000"}  # 0.0.0.0 and ::


class Launcher:
    def __init__(self, factory: WorkerFactory, root: Path) -> None:
        self.factory = factory
        self.root = root
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(
        self, cmd: list[str], log_name: str, **env: str
    ) -> tuple[subprocess.Popen[bytes], Path]:
        log_path = self.root / f"{log_name}.log"
        if "PIPELINE_DATA_DIR" not in env:
            (self.root / "data").mkdir(exist_ok=True)
            env["PIPELINE_DATA_DIR"] = str(self.root / "data")
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                cmd, cwd=PROJECT_ROOT, env=self.factory.env(**env), stdout=log,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )  # fmt: skip
        self.procs.append(proc)
        return proc, log_path

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)


@pytest.fixture
def launcher(workers: WorkerFactory, tmp_path: Path) -> Iterator[Launcher]:
    migrate(workers.database_url)
    launched = Launcher(workers, tmp_path)
    try:
        yield launched
    finally:
        launched.stop_all()


def _output(log_path: Path) -> str:
    return log_path.read_text(errors="replace")


def _exit_without_listening(proc: subprocess.Popen[bytes], port: int, log_path: Path) -> str:
    """Wait for ``proc`` to exit, failing the moment anything listens on ``port``."""
    deadline = time.monotonic() + 90
    while proc.poll() is None:
        bound = listeners(port)
        assert not bound, f"listened on {bound} before exiting:\n{_output(log_path)[-3000:]}"
        assert time.monotonic() < deadline, f"still running:\n{_output(log_path)[-3000:]}"
        time.sleep(0.02)
    assert not listeners(port)
    return _output(log_path)


@pytest.mark.parametrize("entry", list(OPEN_BINDS))
def test_an_open_bind_without_a_token_exits_before_listening(
    launcher: Launcher, entry: str
) -> None:
    port = free_port()
    cmd, env = command(entry, port)
    proc, log_path = launcher.start(cmd, "refused", **env)
    out = _exit_without_listening(proc, port, log_path)
    assert proc.returncode != 0, out
    assert "PIPELINE_API_TOKEN" in out and "127.0.0.1" in out, out
    assert "Traceback" not in out, out


@pytest.mark.parametrize("entry", list(OPEN_BINDS))
def test_an_open_bind_with_a_token_starts_and_listens_on_every_interface(
    launcher: Launcher, entry: str
) -> None:
    port = free_port()
    cmd, env = command(entry, port)
    proc, log_path = launcher.start(cmd, "allowed", PIPELINE_API_TOKEN="t0k-guards", **env)

    def serving() -> bool:
        assert proc.poll() is None, f"exited {proc.returncode}:\n{_output(log_path)[-3000:]}"
        return bool(listeners(port) & WILDCARDS) and _answers(f"http://127.0.0.1:{port}/healthz")

    wait_for(serving, 120, f"{entry} to listen on every interface")


def _answers(url: str) -> bool:
    try:
        return http_get(url, timeout=2)[0] == 200
    except OSError:
        return False


def test_a_data_dir_that_does_not_exist_yet_is_created(launcher: Launcher, tmp_path: Path) -> None:
    port = free_port()
    data_dir = tmp_path / "a" / "b" / "c"
    proc, log_path = launcher.start(
        [PY, "-m", "pipeline", "worker", "-l", "info", "--web-port", str(port)], "data-dir",
        PIPELINE_DATA_DIR=str(data_dir),
    )  # fmt: skip

    def ready() -> bool:
        assert proc.poll() is None, f"exited {proc.returncode}:\n{_output(log_path)[-3000:]}"
        return _answers(f"http://127.0.0.1:{port}/readyz/tables")

    wait_for(ready, 120, "the worker to be ready")
    assert (data_dir / "state").is_dir()


@pytest.mark.parametrize(
    "variable", ["PIPELINE_DATA_DIR", "PIPELINE_STATE_DIR", "PIPELINE_MAILBOX_DIR"]
)
def test_a_directory_that_cannot_be_created_is_one_clear_line(
    launcher: Launcher, tmp_path: Path, variable: str
) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("not a directory")
    port = free_port()
    proc, log_path = launcher.start(
        [PY, "-m", "pipeline", "worker", "-l", "info", "--web-port", str(port)], "bad-dir",
        **{variable: str(a_file / "under" / "it")},
    )  # fmt: skip
    deadline = time.monotonic() + 90
    while proc.poll() is None:
        assert not _answers(f"http://127.0.0.1:{port}/livez"), "started with an unusable dir"
        assert time.monotonic() < deadline, f"still running:\n{_output(log_path)[-3000:]}"
        time.sleep(0.2)
    out = _output(log_path)
    assert proc.returncode != 0, out
    assert "Traceback" not in out, out
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and variable in errors[0] and str(a_file) in errors[0], out
