"""``make bench``: the benchmarks, each beside its baselines, in one run on one machine.

Starts what it needs (a local broker on free ports unless ``KAFKA_BOOTSTRAP_SERVERS`` is set,
the private PostgreSQL), prints a table and writes ``bench/results/latest.json``.
``BENCH_QUICK=1`` runs smaller and fewer repetitions; ``BENCH_ONLY=<name>`` runs one of
forwarder, pipeline, kafka_tools, recovery, e2e. Benchmarks never gate the test suite.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from importlib.metadata import version
from pathlib import Path
from typing import Any

from bench import e2e, forwarder, kafka_tools, pipeline, recovery, report
from pipeline.adapters.db.schema import migrate
from pipeline.local.kafka import LocalKafka
from pipeline.local.postgres import LocalPostgres, default_data_dir
from pipeline.settings import PROJECT_ROOT, load_settings
from tests.integration.workers import create_topics, free_port

RESULTS = PROJECT_ROOT / "bench" / "results" / "latest.json"
LIBRARIES = ("faust-streaming", "aiokafka", "asyncpg", "sqlalchemy", "rocksdict")


def machine() -> dict[str, Any]:
    model = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": round(mem_kb / 1024 / 1024, 1),
        "os": platform.platform(),
    }


def main() -> int:
    quick = os.environ.get("BENCH_QUICK", "") not in ("", "0")
    began = time.monotonic()
    repeats = 1 if quick else 3
    settings = load_settings()
    broker = None
    if settings.kafka_external:
        bootstrap = settings.kafka_bootstrap_servers
    else:
        broker = LocalKafka(
            version=settings.kafka_version, port=free_port(), controller_port=free_port(),
            data_dir=Path(tempfile.mkdtemp(prefix="bench-kafka-")), cache_dir=settings.cache_dir,
        )  # fmt: skip
        print(f"starting local Kafka {settings.kafka_version} ...", flush=True)
        bootstrap = broker.start()
    pg_port = int(os.environ.get("TEST_POSTGRES_PORT", "55432"))
    pg = LocalPostgres(port=pg_port, data_dir=default_data_dir(pg_port, settings.cache_dir))
    pg.start()
    try:
        url = pg.create_database(f"bench_{uuid.uuid4().hex[:8]}")
        migrate(url)
        topic = f"bench{uuid.uuid4().hex[:6]}.orders.events"
        asyncio.run(create_topics(bootstrap, [topic], partitions=settings.partitions))
        only = os.environ.get("BENCH_ONLY", "")
        results: dict[str, Any] = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
        libs = broker.ensure_jars() if broker is not None else None
        mode = "quick" if quick else "full"
        if only in ("", "forwarder"):
            print(f"forwarder benchmark ({'quick' if quick else 'full'}) ...", flush=True)
            results["forwarder"] = asyncio.run(forwarder.run(url, bootstrap, topic, quick, repeats))
            print(forwarder.table(results["forwarder"]))
        if only in ("", "pipeline"):
            print(f"pipeline benchmark ({'quick' if quick else 'full'}) ...", flush=True)
            results["pipeline"] = pipeline.run(bootstrap, quick, repeats)
            print(pipeline.table(results["pipeline"]))
        if only in ("", "kafka_tools") and libs is not None:
            print(f"Kafka's perf tools ({mode}) ...", flush=True)
            source = results["pipeline"].get("source_topic") if only == "" else None
            count = results["pipeline"].get("events", 0) if source else 0
            scratch = f"bench{uuid.uuid4().hex[:6]}.perf"
            if not source:  # alone: the tool's own records, read back
                source, count = scratch, 200_000 if quick else 1_000_000
            asyncio.run(create_topics(bootstrap, [scratch], partitions=settings.partitions))
            results["kafka_tools"] = kafka_tools.run(libs, bootstrap, scratch, source, count,
                                                     quick, repeats)  # fmt: skip
        if only in ("", "recovery"):
            print(f"recovery and memory benchmark ({mode}) ...", flush=True)
            results["recovery"], results["memory"] = recovery.run(
                bootstrap, libs, quick, 1, settings.partitions
            )
        if only in ("", "e2e"):
            print(f"end-to-end benchmark ({mode}) ...", flush=True)
            e2e_url = pg.create_database(f"bench_e2e_{uuid.uuid4().hex[:8]}")
            migrate(e2e_url)
            results["e2e"] = e2e.run(bootstrap, e2e_url, quick, settings.partitions)
        pg_version = subprocess.run(
            ["psql", "--version"], capture_output=True, text=True, check=False
        ).stdout.strip()
        results.update(
            {
                "meta": {
                    "mode": "quick" if quick else "full",
                    "repeats": repeats,
                    "machine": machine(),
                    "kafka": settings.kafka_version if broker else f"external {bootstrap}",
                    "postgresql": pg_version,
                    "python": sys.version.split()[0],
                    "libraries": {name: version(name) for name in LIBRARIES},
                },
            }
        )
        # Others' work on the machine moves every figure: say how busy it was.
        results["meta"]["load_average_1_5_15"] = [round(x, 2) for x in os.getloadavg()]
        results["meta"]["duration_s"] = round(time.monotonic() - began)
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(results, indent=2) + "\n")
        print()
        print(report.render(report.summary_rows(results)))
        missing = report.missing_keys(results)
        if missing:
            print(f"missing from the results: {', '.join(missing)}")
        print(f"written to {RESULTS.relative_to(PROJECT_ROOT)}")
    finally:
        if broker is not None:
            broker.stop()
            # A full run leaves 3-5 GB of topic data; nothing reads it afterwards.
            shutil.rmtree(broker.data_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
