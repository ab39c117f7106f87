"""Profile evidence for the benchmarks (``BENCH_PROFILE=1``): py-spy samples a worker during a
phase, and :func:`summary` says where its main thread spent the samples.

py-spy (a dev dependency) attaches to the worker's pid and writes collapsed stacks
(``--format raw``) with idle samples included, so a thread waiting on the network shows as
time in the selector rather than disappearing. The raw files stay in
``bench/results/profiles/`` for flame graphs; the summary goes into ``latest.json``.
"""

from __future__ import annotations

import collections
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from pipeline.settings import PROJECT_ROOT

PROFILES_DIR = PROJECT_ROOT / "bench" / "results" / "profiles"
RATE = 100  # samples per second

# Frames that say what a sample was doing, in the order they are looked for from the leaf.
# The first one found in a stack names its category.
CATEGORIES: list[tuple[str, str]] = [
    ("select", "idle: waiting on the network"),
    ("apply_changelog_batch", "recovery: applying changelog records to RocksDB"),
    ("_slurp_changelogs", "recovery: Faust's per-record restore loop"),
    ("customer_analytics", "agent: analytics (customer stats)"),
    ("request_lines", "agent: inventory requests (repartition by SKU)"),
    ("keep_stock", "agent: inventory (stock)"),
    ("track_order_status", "agent: order status (database update)"),
    ("notify_customers", "agent: notifications"),
    ("revenue_windows", "agent: revenue windows"),
    ("index_dead_letters", "agent: dead-letter index"),
    ("forward_once", "outbox forwarder"),
    ("_handle_request", "web: HTTP requests (orders, stats reads)"),
    ("_drain_messages", "Faust: fetcher hand-over to the agents"),
    ("_send_produce_req", "aiokafka: producer requests"),
    ("_sender_routine", "aiokafka: producer requests"),
    ("_on_published", "Faust: changelog acknowledgements"),
    ("_send_pending", "Faust: changelog buffer"),
    ("commit", "Faust: offset commits"),
]


def available() -> bool:
    return shutil.which("py-spy", path=str(Path(sys.executable).parent)) is not None


def start(pid: int, name: str, seconds: float) -> subprocess.Popen[bytes]:
    """Sample ``pid`` for ``seconds`` in the background into ``PROFILES_DIR/<name>.txt``."""
    PROFILES_DIR.mkdir(parents=True, exist_ok=True)
    exe = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or "py-spy"
    command = [exe, "record", "-p", str(pid), "-d", str(int(seconds)), "-r", str(RATE),
               "--idle", "--format", "raw", "-o", str(PROFILES_DIR / f"{name}.txt")]  # fmt: skip
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def finish(procs: list[subprocess.Popen[bytes]], names: list[str]) -> dict[str, Any]:
    for proc in procs:
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
    out = {}
    for name in names:
        path = PROFILES_DIR / f"{name}.txt"
        if path.exists() and path.stat().st_size:
            out[name] = summary(path.read_text())
    return out


def summary(raw: str) -> dict[str, Any]:
    """The main thread's samples by category (percent), from py-spy's collapsed stacks."""
    counts: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit() or "WorkerThread" in stack or "_bootstrap" in stack:
            continue  # other threads: the Kafka consumer's own loop, executors
        frames = [f.split(" (")[0].rsplit(".", 1)[-1] for f in stack.split(";")]
        total += int(n)
        counts[_category(frames)] += int(n)
    shares = {k: round(100 * v / total, 1) for k, v in counts.most_common() if total}
    return {"main_thread_samples": total, "percent": shares}


def _category(frames: list[str]) -> str:
    for fn, label in CATEGORIES:
        if fn in frames:
            return label
    return "other (event loop, asyncio, Faust services)"


def enabled() -> bool:
    return os.environ.get("BENCH_PROFILE", "") not in ("", "0") and available()
