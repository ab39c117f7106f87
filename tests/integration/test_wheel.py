"""The package as a user gets it: a wheel, installed into a fresh virtualenv outside the clone.

The wheel is built from a copy of the sources (so a stale ``build/`` in the clone cannot leak
into it) with the virtualenv's own setuptools, offline. The new virtualenv gets the wheel and
nothing of the clone: the dependencies come from the test's virtualenv through a ``.pth`` line,
which adds that directory to ``sys.path`` without running its ``.pth`` files, so the editable
install of this project stays invisible. Every command runs with its working directory outside
the clone; the judge of the worker's event is a plain aiokafka consumer.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.settings import PROJECT_ROOT
from tests.integration.workers import Worker, consume, free_port, http_post

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

SOURCES = ("pyproject.toml", "README.md", "LICENSE", "pipeline", "agents", "tables")


def run(cmd: list[str], *, cwd: Path, env: dict[str, str], timeout: float = 180) -> str:
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=timeout, check=False)  # fmt: skip
    assert result.returncode == 0, (
        f"{cmd} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    )
    return result.stdout


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``root`` with its size and modification time."""
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in root.rglob("*")
        if p.is_file()
    }


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """A virtualenv holding the built wheel: (its bin directory, its site-packages)."""
    root = tmp_path_factory.mktemp("wheel")
    assert not root.resolve().is_relative_to(PROJECT_ROOT)
    src = root / "src"
    src.mkdir()
    for name in SOURCES:
        source = PROJECT_ROOT / name
        if source.is_dir():
            shutil.copytree(source, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, src / name)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    dist = root / "dist"
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "-w", str(dist), str(src)], cwd=root, env=env)  # fmt: skip
    (wheel,) = dist.glob("orders_pipeline-*.whl")

    venv = root / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=root, env=env)
    python = venv / "bin" / "python"
    site = Path(run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                    cwd=root, env=env).strip())  # fmt: skip
    # The dependencies, not the project: a plain path line runs none of that directory's .pth.
    (site / "dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
         "--no-index", str(wheel)], cwd=root, env=env)  # fmt: skip
    yield venv / "bin", site


@pytest.fixture
def outside(tmp_path: Path) -> dict[str, str]:
    """An environment for the installed commands: a cache directory of their own, no clone on
    the path. HOME stays: Maven's local repository (~/.m2) already holds the Kafka jars."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PIPELINE_", "KAFKA_", "DATABASE_")) and k != "PYTHONPATH"
    }
    env.update(XDG_CACHE_HOME=str(tmp_path / "xdg-cache"), PYTHONUNBUFFERED="1")
    return env


def test_the_wheel_carries_what_runs_from_it(installed: tuple[Path, Path]) -> None:
    _, site = installed
    for name in ("pipeline/local/pom.xml", "pipeline/web/dashboard.html",
                 "pipeline/adapters/db/migrations/env.py",
                 "pipeline/adapters/db/migrations/script.py.mako",
                 "pipeline/py.typed", "agents/py.typed", "tables/py.typed"):  # fmt: skip
        assert (site / name).is_file(), name
    assert list((site / "pipeline/adapters/db/migrations/versions").glob("0001_*.py"))
    (dist_info,) = site.glob("orders_pipeline-*.dist-info")
    license_text = next(dist_info.rglob("LICENSE")).read_text()
    assert "Apache License" in license_text and "Version 2.0" in license_text
    assert "License-Expression: Apache-2.0" in (dist_info / "METADATA").read_text()


def test_an_installed_package_runs_outside_the_clone(
    installed: tuple[Path, Path], outside: dict[str, str], tmp_path: Path,
    kafka_bootstrap: str, test_id: str,
) -> None:  # fmt: skip
    bin_dir, site = installed
    before = snapshot(site)
    cwd = tmp_path / "run"
    cwd.mkdir()
    python = str(bin_dir / "python")

    where = json.loads(run([python, "-c",
        "import json, agents, pipeline, tables; from pipeline.settings import load_settings; "
        "print(json.dumps([pipeline.__file__, agents.__file__, tables.__file__, "
        "str(load_settings().cache_dir), str(load_settings().data_dir)]))"],
        cwd=cwd, env=outside))  # fmt: skip
    for module_file in where[:3]:
        assert Path(module_file).is_relative_to(site), module_file
    assert where[3] == str(Path(outside["XDG_CACHE_HOME"]) / "orders-pipeline")
    assert where[4] == str(cwd / "data")

    script = str(bin_dir / "orders-pipeline")
    assert run([script, "--help"], cwd=cwd, env=outside).startswith("usage: orders-pipeline ")
    assert run([python, "-m", "pipeline", "--help"], cwd=cwd, env=outside).startswith(
        "usage: python -m pipeline "
    )

    # The Kafka jars through the packaged pom.xml, into the user's cache (Maven's local
    # repository already holds them: the session's broker came from it).
    libs = Path(run([script, "kafka", "jars"], cwd=cwd, env=outside).strip())
    assert libs.is_relative_to(outside["XDG_CACHE_HOME"]) and list(libs.glob("kafka_2.13-*.jar"))

    database = cwd / "shop.db"
    env = {**outside, "DATABASE_URL": f"sqlite:///{database}",
           "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "PIPELINE_APP_ID": f"it-{test_id}",
           "PIPELINE_TOPIC_PREFIX": f"t{test_id}.", "PIPELINE_PARTITIONS": "2"}  # fmt: skip
    assert "schema at revision" in run([script, "migrate"], cwd=cwd, env=env)
    assert database.is_file()

    port = free_port()
    log_path = tmp_path / "worker.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [script, "worker", "-l", "info", "--web-port", str(port)],
            cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    worker = Worker("installed", proc, port, cwd / "data", log_path)
    try:
        worker.wait_ready(timeout=120)
        status, body = http_post(worker.url + "/orders", {
            "customer_id": "c-wheel", "customer_email": "c-wheel@example.com",
            "items": [{"sku": "sku-1", "quantity": 2, "unit_price": "3.50"}],
        })  # fmt: skip
        assert status == 201, body
        records = asyncio.run(consume(kafka_bootstrap, f"t{test_id}.orders.events", count=1))
        assert [(r.key, json.loads(r.value)["order_id"]) for r in records] == [
            (b"c-wheel", body["order_id"])
        ]
    finally:
        worker.stop()

    assert snapshot(site) == before, "something was written inside the installed package"
    assert (cwd / "data").is_dir()  # the worker's state went where it was started
