"""``python -m pipeline postgres up|status|down``: a private PostgreSQL cluster on a free port,
a database in it, and a clean stop, as ``make test`` and the benchmarks use it."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys

import asyncpg  # type: ignore[import-untyped]

from pipeline.local.postgres import default_data_dir
from pipeline.settings import PROJECT_ROOT
from tests.integration.workers import free_port


def _pipeline(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipeline", "postgres", *args],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=180, check=False,
        env={k: v for k, v in os.environ.items() if not k.startswith("PIPELINE_")},
    )  # fmt: skip


def test_postgres_up_status_and_down_on_a_free_port() -> None:
    port = free_port()
    try:
        assert _pipeline("status", "--port", str(port)).returncode == 1  # nothing there yet
        up = _pipeline("up", "--port", str(port), "--database", "cli_check")
        assert up.returncode == 0, up.stdout + up.stderr
        dsn = up.stdout.strip().splitlines()[-1]
        assert dsn.startswith("postgresql://") and f":{port}/cli_check" in dsn

        async def ask() -> int:
            conn = await asyncpg.connect(dsn)
            try:
                return int(await conn.fetchval("SELECT 1"))
            finally:
                await conn.close()

        assert asyncio.run(ask()) == 1
        status = _pipeline("status", "--port", str(port))
        assert status.returncode == 0 and "running at" in status.stdout
        again = _pipeline("up", "--port", str(port), "--database", "cli_check")  # idempotent
        assert again.returncode == 0, again.stderr
    finally:
        down = _pipeline("down", "--port", str(port))
    assert down.returncode == 0 and "stopped" in down.stdout
    assert _pipeline("status", "--port", str(port)).returncode == 1
    shutil.rmtree(default_data_dir(port, PROJECT_ROOT / ".cache"), ignore_errors=True)
