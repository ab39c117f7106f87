"""A rolling upgrade with orders flowing: a worker of the previous release and workers of this
one share the topics, the old one is stopped, then the new ones switch to writing
``OrderCreated`` version 2 (docs/schema-evolution.md).

The previous release is the real one, materialised from git (``git archive``) into a temporary
folder and run from there, not this code configured to behave like it. The checkout must hold
its commit: a full clone does; in a shallow one, ``git fetch --unshallow`` first. Set
``TEST_PREVIOUS_RELEASE`` to another commit to upgrade from that one.
"""

from __future__ import annotations

import email
import json
import os
import subprocess
import sys
import tarfile
import time
from collections import Counter
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from pipeline.adapters.db.schema import migrate
from pipeline.domain.events import Contact, OrderCreated, OrderLine, encode
from pipeline.settings import PROJECT_ROOT
from tests.conftest import T0
from tests.integration.faults import Scenario
from tests.integration.history import Load, read_db, read_topics
from tests.integration.workers import Worker, WorkerFactory

# The last commit before OrderCreated version 2: its workers read and write version 1 only.
PREVIOUS_RELEASE = "979b32b90f974164bd66369e36787dba11cbcb4f"
STEP_SECONDS = 8.0  # orders flowing through each mix of workers


@pytest.fixture(scope="module")
def previous_release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The previous release's packages, from git, in a folder of their own."""
    commit = os.environ.get("TEST_PREVIOUS_RELEASE", PREVIOUS_RELEASE)
    git = ["git", "-C", str(PROJECT_ROOT)]
    found = subprocess.run([*git, "rev-parse", "--verify", "--quiet", f"{commit}^{{commit}}"],
                           capture_output=True, text=True, check=False)  # fmt: skip
    if found.returncode != 0:
        pytest.fail(f"commit {commit} (the release to upgrade from) is not in this checkout: "
                    "clone with full history, or run `git fetch --unshallow`")  # fmt: skip
    root = tmp_path_factory.mktemp("previous-release")
    archive = root / "release.tar"
    subprocess.run([*git, "archive", "--output", str(archive), found.stdout.strip(),
                    "pipeline", "agents", "tables"], check=True)  # fmt: skip
    with tarfile.open(archive) as tar:
        tar.extractall(root, filter="data")
    archive.unlink()
    return root


@pytest.fixture
def factory(kafka_bootstrap: str, tmp_path: Path, test_id: str, database_url: str
            ) -> Iterator[WorkerFactory]:  # fmt: skip
    """Workers on the session's broker and this test's database (SQLite, then PostgreSQL),
    migrated by this release first, as its release step does."""
    migrate(database_url)
    workers = WorkerFactory(kafka_bootstrap, tmp_path, f"it-{test_id}", f"t{test_id}.",
                            database_url)  # fmt: skip
    try:
        yield workers
    finally:
        workers.stop_all()


def _old_decoder_says(code: Path, raw: bytes) -> str:
    """What the previous release's decoder makes of ``raw``: the event's type, or its refusal."""
    script = (
        "import sys\n"
        "from pipeline.domain.events import InvalidEvent, decode_order_event\n"
        "try:\n"
        "    print(type(decode_order_event(sys.stdin.buffer.read())).__name__)\n"
        "except InvalidEvent as exc:\n"
        "    print(f'refused: {exc}')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(code)}
    done = subprocess.run([sys.executable, "-c", script], cwd=code, env=env, input=raw,
                          capture_output=True, check=True, timeout=60)  # fmt: skip
    return done.stdout.decode().strip()


def test_the_previous_release_reads_version_1_and_refuses_version_2(
    previous_release: Path,
) -> None:
    # Why the upgrade takes two steps: a worker of the previous release would dead-letter
    # every order a new worker wrote at version 2.
    event = OrderCreated(
        event_id="e-1", order_id="o-1", customer_id="alice", contact=Contact("alice@example.com"),
        items=(OrderLine("sku-1", 1, Decimal("2.50")),), total=Decimal("2.50"), created_at=T0,
    )  # fmt: skip
    assert _old_decoder_says(previous_release, encode(event, 1)) == "OrderCreated"
    # ... and what a later release adds as an optional field, it ignores
    with_more = {**json.loads(encode(event, 1)), "gift_wrap": True}
    assert _old_decoder_says(previous_release, json.dumps(with_more).encode()) == "OrderCreated"
    refusal = _old_decoder_says(previous_release, encode(event, 2))
    assert refusal.startswith("refused:") and "schema_version 2" in refusal, refusal


def test_a_rolling_upgrade_applies_every_order_once_and_dead_letters_nothing(
    factory: WorkerFactory, previous_release: Path
) -> None:
    workers = factory
    scenario = Scenario("rolling upgrade", workers)
    old = scenario.start("old", code=previous_release)
    new = scenario.start("new")  # this release, writing version 1 (the default)
    scenario.stock_up(old)
    live: list[Worker] = [old, new]
    load = scenario.run_load(lambda: list(live), rate=10)

    # Step 1, readers first: old and new side by side, then the old one stopped, as a rolling
    # restart does (out of the load's targets first, then SIGTERM).
    _flow(load, STEP_SECONDS)
    live.remove(old)
    assert old.stop() == 0, f"the old worker did not stop cleanly:\n{old.log()[-3000:]}"
    _flow(load, STEP_SECONDS)

    # Step 2, then writers: each worker replaced by one writing version 2, one at a time; for
    # a while one writes version 1 and the other version 2.
    upgraded = scenario.start("new-v2", PIPELINE_EVENT_WRITE_VERSION="2")
    live.append(upgraded)
    _flow(load, STEP_SECONDS)
    live.remove(new)
    assert new.stop() == 0
    _flow(load, STEP_SECONDS)

    # Nothing dead-lettered, every order's effects once: stock, customer stats, milestones,
    # revenue, one mail per decision; the database reconciles with the tables.
    scenario.finish(upgraded, expect_rejections=False)

    # Both versions were really on the topic, and the old worker really did work.
    topics = read_topics(workers.bootstrap, {"orders.events": workers.topic("orders.events")})
    versions = Counter(
        r.value["schema_version"]
        for r in topics["orders.events"]
        if r.value and r.value.get("event_type") == "OrderCreated"
    )
    assert versions[1] and versions[2], versions
    assert list((old.data_dir / "mailbox").glob("*.eml")), "the old worker sent no mail"
    _mail_goes_to_each_orders_customer(scenario)


def _flow(load: Load, seconds: float) -> None:
    """Let the load run ``seconds``, stopping at once if it died."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        load.check()
        time.sleep(0.5)


def _mail_goes_to_each_orders_customer(scenario: Scenario) -> None:
    """The email travels as ``customer_email`` (version 1) or ``contact.email`` (version 2):
    every mail, whichever worker wrote it, goes to its order's customer."""
    orders = read_db(scenario.workers.database_url).orders
    checked = 0
    for folder in scenario.mail_dirs():
        for path in folder.glob("*.eml"):
            mail = email.message_from_bytes(path.read_bytes())
            order_id = str(mail["Subject"]).split()[2]
            assert mail["To"] == f"{orders[order_id].customer_id}@example.com", path
            checked += 1
    assert checked, "no mail was sent"
