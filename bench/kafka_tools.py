"""Kafka's own performance tools as baselines: ``kafka-producer-perf-test`` and
``kafka-consumer-perf-test``, run from the same Maven-resolved jars the local broker runs from
(the classes behind the shell scripts, on Java), against the same broker.

They say what the broker and a JVM client manage on this machine, beside which the Python
figures are read.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

PRODUCER = "org.apache.kafka.tools.ProducerPerformance"
CONSUMER = "org.apache.kafka.tools.ConsumerPerformance"


def java_command(libs_dir: Path, main: str, *args: str) -> list[str]:
    """``java`` with the broker jars on the classpath, as :class:`LocalKafka` runs the broker."""
    java_home = os.environ.get("JAVA_HOME")
    java = str(Path(java_home) / "bin" / "java") if java_home else shutil.which("java") or "java"
    return [java, "-Xmx512m", "-XX:+UseG1GC", "-Djava.awt.headless=true",
            "-Dlog4j2.rootLogger.level=WARN", "-cp", f"{libs_dir}/*", main, *args]  # fmt: skip


def parse_producer(output: str) -> dict[str, float]:
    """The summary line: ``N records sent, X records/sec (Y MB/sec), A ms avg latency, M ms max
    latency, p50 ms 50th, ...``."""
    for line in reversed(output.splitlines()):
        if "records sent" in line and "records/sec" in line:
            parts = [p.strip() for p in line.split(",")]
            out = {
                "records": float(parts[0].split()[0]),
                "records_per_s": float(parts[1].split()[0]),
                "mb_per_s": float(parts[1].split("(")[1].split()[0]),
                "avg_latency_ms": float(parts[2].split()[0]),
            }
            for part in parts[3:]:
                words = part.rstrip(".").split()
                if len(words) >= 3 and words[2].endswith("th"):
                    out[f"p{words[2][:-2]}_latency_ms"] = float(words[0])
            return out
    raise ValueError(f"no summary line in producer perf output:\n{output[-2000:]}")


def parse_consumer(output: str) -> dict[str, float]:
    """The CSV pair: a header naming ``nMsg.sec`` and ``fetch.nMsg.sec``, then its values."""
    lines = [line for line in output.splitlines() if line.count(",") >= 5]
    for header, values in itertools.pairwise(lines):
        if "nMsg.sec" in header:
            row = dict(zip([h.strip() for h in header.split(",")],
                           [v.strip() for v in values.split(",")], strict=False))  # fmt: skip
            return {
                "records": float(row["data.consumed.in.nMsg"]),
                "records_per_s": float(row["nMsg.sec"]),
                "fetch_records_per_s": float(row.get("fetch.nMsg.sec", row["nMsg.sec"])),
                "mb_per_s": float(row["MB.sec"]),
            }
    raise ValueError(f"no result line in consumer perf output:\n{output[-2000:]}")


def _run(cmd: list[str], timeout: float) -> str:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{cmd[-1]} failed ({result.returncode}):\n{result.stderr[-2000:]}")
    return result.stdout


def producer_perf(libs_dir: Path, bootstrap: str, topic: str, records: int,
                  record_size: int = 300) -> dict[str, float]:  # fmt: skip
    """As the pipeline's producers are set: acks=all, idempotent, 5 ms linger, 512 KiB batches."""
    cmd = java_command(
        libs_dir, PRODUCER, "--topic", topic, "--num-records", str(records),
        "--record-size", str(record_size), "--throughput", "-1",
        "--producer-props", f"bootstrap.servers={bootstrap}", "acks=all",
        "enable.idempotence=true", "linger.ms=5", f"batch.size={512 * 1024}",
    )  # fmt: skip
    return parse_producer(_run(cmd, timeout=300))


def consumer_perf(libs_dir: Path, bootstrap: str, topic: str, records: int) -> dict[str, float]:
    """Reads ``records`` from the start of ``topic`` in a fresh group."""
    cmd = java_command(
        libs_dir, CONSUMER, "--bootstrap-server", bootstrap, "--topic", topic,
        "--messages", str(records), "--timeout", "60000",
    )  # fmt: skip
    return parse_consumer(_run(cmd, timeout=300))


def run(libs_dir: Path, bootstrap: str, topic: str, source: str, source_records: int,
        quick: bool, repeats: int) -> dict[str, Any]:  # fmt: skip
    """Producer tool on ``topic`` (a scratch topic laid out as the orders topic); consumer tool
    reading ``source`` (the prefilled orders topic the pipeline benchmark consumed)."""
    records = 200_000 if quick else 1_000_000
    producer_perf(libs_dir, bootstrap, topic, 20_000)  # warm-up: JIT, metadata, segments
    producers = [producer_perf(libs_dir, bootstrap, topic, records) for _ in range(repeats)]
    consumers = [consumer_perf(libs_dir, bootstrap, source, source_records) for _ in range(repeats)]
    producers.sort(key=lambda r: r["records_per_s"])
    consumers.sort(key=lambda r: r["fetch_records_per_s"])
    producer, consumer = producers[len(producers) // 2], consumers[len(consumers) // 2]
    return {
        "producer_records": records,
        "producer_record_bytes": 300,
        "producer_records_per_s": producer["records_per_s"],
        "producer_records_per_s_runs": [r["records_per_s"] for r in producers],
        "producer_p99_latency_ms": producer.get("p99_latency_ms", float("nan")),
        "consumer_records": source_records,
        "consumer_records_per_s": consumer["fetch_records_per_s"],
        "consumer_records_per_s_runs": [r["fetch_records_per_s"] for r in consumers],
    }
