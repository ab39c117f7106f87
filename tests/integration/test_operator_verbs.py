"""The operator's verbs against real workers, a real forwarder process, the database and Kafka,
on SQLite and PostgreSQL: each judged from the database and from topics read with a plain
consumer, never from what the command says it did.

- A parked row requeued is published exactly once; one whose later events of the same key went
  out first is refused unless asked out of order; a discarded one never reaches the topic, and
  each leaves its record in ``operator_actions``.
- Discarded dead letters are not replayed by a later ``dlt replay --all``.
- SKUs with their stock and a customer's orders come a page at a time, from two workers.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from pipeline.adapters.db.schema import (
    dead_letter_replays,
    dead_letters,
    operator_actions,
    orders,
    outbox,
)
from pipeline.settings import PROJECT_ROOT
from tests.integration.test_ops_cli import _db, cli
from tests.integration.workers import (
    WorkerFactory,
    consume,
    free_port,
    migrated_workers,
    produce,
    wait_for,
)

pytestmark = pytest.mark.integration

TOKEN = "verbs-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def factory(
    database_url: str, kafka_bootstrap: str, tmp_path: Path, test_id: str
) -> Iterator[WorkerFactory]:
    with migrated_workers(kafka_bootstrap, tmp_path, test_id, database_url) as made:
        yield made


def request(method: str, url: str, body: Any = None, token: str | None = TOKEN) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"} if data else {}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def order(customer: str, lines: int) -> dict[str, Any]:
    return {
        "customer_id": customer,
        "customer_email": f"{customer}@example.com",
        "items": [{"sku": f"sku-{n:03}", "quantity": 1, "unit_price": "1.00"}
                  for n in range(lines)],
    }  # fmt: skip


class Forwarder:
    """``python -m pipeline forwarder`` as a process of its own."""

    def __init__(self, factory: WorkerFactory, name: str, **env: str) -> None:
        log = factory.root / f"{name}.log"
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "pipeline", "forwarder", "--web-port", str(free_port())],
                cwd=PROJECT_ROOT, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=factory.env(PIPELINE_DATA_DIR=str(factory.root / name),
                                PIPELINE_OUTBOX_POLL_INTERVAL="0.05", **env),
            )  # fmt: skip

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


def statuses(url: str) -> dict[str, str]:
    """Each outbox row's status, by the customer id and line count of its order."""
    return {r.event_id: r.status for r in _db(url, select(outbox.c.event_id, outbox.c.status))}


def test_parked_rows_are_requeued_once_or_discarded_for_good(
    factory: WorkerFactory, database_url: str, tmp_path: Path
) -> None:
    worker = factory.start(PIPELINE_API_TOKEN=TOKEN, PIPELINE_FORWARDER_ENABLED="false")
    env = factory.env(PIPELINE_DATA_DIR=str(tmp_path / "cli"), PIPELINE_API_TOKEN=TOKEN)
    # A forwarder whose limit (2 KiB) refuses an order of 60 lines (about 4 KiB): parked.
    strict = Forwarder(factory, "strict", PIPELINE_OUTBOX_MAX_MESSAGE_BYTES="2048")
    try:
        placed = {}
        for name, customer, lines in [
            ("big", "cust-big", 60),  # parked; nothing of its key after it
            ("early", "cust-order", 60),  # parked; its key's next order goes out first
            ("later", "cust-order", 1),
            ("junk", "cust-junk", 60),  # parked, then discarded
            ("small", "cust-small", 1),
        ]:
            status, body = request("POST", f"{worker.url}/orders", order(customer, lines))
            assert status == 201, body
            placed[name] = body["order_id"]
        rows = {
            r.aggregate_id: r
            for r in _db(
                database_url, select(outbox.c.id, outbox.c.aggregate_id, outbox.c.event_id)
            )
        }
        row = {name: rows[order_id].id for name, order_id in placed.items()}
        event = {name: rows[order_id].event_id for name, order_id in placed.items()}

        def settled() -> bool:
            now = statuses(database_url)
            return sorted(now.values()) == ["parked"] * 3 + ["published"] * 2

        wait_for(settled, 60, "three rows parked and two published")
    finally:
        strict.stop()

    # outbox parked: a page at a time, with why each row was parked.
    first = cli(env, "outbox", "parked", "--limit", "2", "--json")
    assert first.returncode == 0, first.stderr
    page = json.loads(first.stdout)
    assert [p["id"] for p in page["parked"]] == [row["big"], row["early"]]
    assert page["next"] == row["early"]
    second = json.loads(cli(env, "outbox", "parked", "--after", str(page["next"]),
                            "--json").stdout)  # fmt: skip
    assert [p["id"] for p in second["parked"]] == [row["junk"]] and second["next"] is None
    big = page["parked"][0]
    assert (big["key"], big["attempts"], big["topic"]) == (
        "cust-big", 1, factory.topic("orders.events"))  # fmt: skip
    assert "MessageSizeTooLarge" in big["parked_reason"] and big["age_seconds"] >= 0
    status, listed = request("GET", f"{worker.url}/admin/outbox/parked?limit=1&after={row['big']}")
    assert status == 200 and [p["id"] for p in listed["parked"]] == [row["early"]]

    # The cause is fixed: a forwarder with the default limit.
    relaxed = Forwarder(factory, "relaxed")
    try:
        # Discard over HTTP: the token, a reason, and the row's id are required.
        url = f"{worker.url}/admin/outbox/discard"
        assert request("POST", url, {"ids": [row["junk"]], "why": "x"}, token=None)[0] == 401
        status, body = request("POST", url, {"ids": [row["junk"]]})
        assert status == 422 and body["error"] == "validation_failed"
        assert [p["field"] for p in body["detail"]] == ["why"]
        status, body = request("POST", url, {"ids": ["1 OR 1=1"], "why": "x"})
        assert status == 422 and [p["field"] for p in body["detail"]] == ["ids"]
        status, body = request("POST", url, {"ids": [row["junk"]], "why": "a test order",
                                             "by": "ops-anna"})  # fmt: skip
        assert (status, body) == (200, {"discarded": [row["junk"]], "refused": []})

        # Requeue from the CLI: the row whose key has a later event out is refused...
        done = cli(env, "outbox", "requeue", str(row["big"]), str(row["early"]),
                   "--why", "limit raised", "--by", "ops-ben")  # fmt: skip
        assert done.returncode == 1, done.stdout + done.stderr
        assert f"requeued 1: {row['big']}" in done.stdout
        assert f"refused {row['early']}: later events of its key 'cust-order'" in done.stdout
        # ... until asked to send it out of order, over HTTP.
        url = f"{worker.url}/admin/outbox/requeue"
        status, body = request("POST", url, {"ids": [row["early"]], "out_of_order": "yes"})
        assert status == 422 and [p["field"] for p in body["detail"]] == ["out_of_order"]
        status, body = request("POST", url, {"ids": [row["early"]], "out_of_order": True})
        assert (status, body) == (200, {"requeued": [row["early"]], "refused": []})

        def forwarded() -> bool:
            return sorted(statuses(database_url).values()) == ["discarded"] + ["published"] * 4

        wait_for(forwarded, 60, "the requeued rows to be published")
        # Read the whole topic with a plain consumer, a while after the last publish.
        records = asyncio.run(consume(factory.bootstrap, factory.topic("orders.events"),
                                      count=10_000, timeout=8))  # fmt: skip
    finally:
        relaxed.stop()
    seen = Counter(dict(r.headers)["event_id"].decode() for r in records)
    assert seen == Counter({event[n]: 1 for n in ("big", "early", "later", "small")})
    assert event["junk"] not in seen
    early_at = [dict(r.headers)["event_id"].decode() for r in records
                if r.key == b"cust-order"]  # fmt: skip
    assert early_at == [event["later"], event["early"]]  # out of order, as asked

    # The records: who, what, why, on which row; the requeue again is refused, not repeated.
    actions = _db(database_url, select(operator_actions).order_by(operator_actions.c.id))
    assert [(a.subject, a.action, a.actor, a.reason) for a in actions] == [
        (str(row["junk"]), "outbox.discard", "ops-anna", "a test order"),
        (str(row["big"]), "outbox.requeue", "ops-ben", "limit raised"),
        (str(row["early"]), "outbox.requeue", "http:127.0.0.1", None),
    ]
    assert json.loads(actions[0].detail)["parked_reason"].startswith("MessageSizeTooLarge")
    assert json.loads(actions[2].detail)["out_of_order"] is True
    again = cli(env, "outbox", "requeue", str(row["big"]), str(row["junk"]))
    assert again.returncode == 1
    assert f"refused {row['junk']}: not parked: it is discarded" in again.stdout
    assert len(_db(database_url, select(operator_actions.c.id))) == 3


def test_discarded_dead_letters_are_not_replayed_by_replay_all(
    factory: WorkerFactory, database_url: str, tmp_path: Path
) -> None:
    worker = factory.start(PIPELINE_API_TOKEN=TOKEN)
    env = factory.env(PIPELINE_DATA_DIR=str(tmp_path / "cli"), PIPELINE_API_TOKEN=TOKEN)
    # Three poison pills on the inventory commands (one agent reads them): three dead letters.
    pills = [(f"sku-{n}".encode(), f"not json {n}".encode()) for n in range(3)]
    asyncio.run(produce(factory.bootstrap, factory.topic("inventory.commands"), pills))

    def indexed() -> list[Any]:
        rows = _db(database_url, select(dead_letters.c.id, dead_letters.c.record_value,
                                        dead_letters.c.agent))  # fmt: skip
        return len(rows) == 3 and rows

    letters = {r.record_value: r for r in wait_for(indexed, 60, "three dead letters indexed")}
    first, second, third = (letters[v] for _, v in pills)

    # One discarded from the CLI, one over HTTP with a filter; a reason is required.
    missing = cli(env, "dlt", "discard", "--id", first.id)
    assert missing.returncode == 2 and "--why" in missing.stderr
    done = cli(env, "dlt", "discard", "--id", first.id, "--why", "a test producer's garbage")
    assert done.returncode == 0 and f"discarded 1: {first.id}" in done.stdout, done.stderr
    url = f"{worker.url}/dead-letters/discard"
    status, body = request("POST", url, {"all": True, "since": "not a time"})
    assert status == 422 and [p["field"] for p in body["detail"]] == ["since", "why"]
    status, body = request("POST", url, {"ids": [second.id], "why": "garbage too"})
    assert (status, body) == (200, {"discarded": [second.id], "refused": []})
    status, body = request("GET", f"{worker.url}/dead-letters?status=open")
    assert [d["id"] for d in body["dead_letters"]] == [third.id]

    replay = cli(env, "dlt", "replay", "--all")
    assert replay.returncode == 0, replay.stdout + replay.stderr
    named = cli(env, "dlt", "replay", "--id", first.id)  # by id, even: refused
    assert named.returncode == 1 and "discarded: never replayed" in named.stdout

    # Judged from the redelivery topic and the database, not from what the CLI printed.
    redelivered = asyncio.run(consume(factory.bootstrap,
                                      factory.topic(f"redeliver.{third.agent}"),
                                      count=10_000, timeout=8))  # fmt: skip
    assert [r.value for r in redelivered] == [pills[2][1]]
    replays = _db(database_url, select(dead_letter_replays.c.dead_letter_id))
    assert [r.dead_letter_id for r in replays] == [third.id]
    now = {r.id: r.status for r in _db(database_url, select(dead_letters.c.id,
                                                             dead_letters.c.status))}  # fmt: skip
    assert now[first.id] == now[second.id] == "discarded"
    actions = _db(database_url, select(operator_actions).order_by(operator_actions.c.id))
    assert [(a.subject, a.action, a.reason) for a in actions] == [
        (first.id, "dead-letter.discard", "a test producer's garbage"),
        (second.id, "dead-letter.discard", "garbage too"),
    ]
    assert actions[0].actor.startswith("cli:") and actions[1].actor == "http:127.0.0.1"


def test_skus_and_a_customers_orders_come_a_page_at_a_time(
    factory: WorkerFactory, database_url: str, tmp_path: Path
) -> None:
    first = factory.start("w1", PIPELINE_API_TOKEN=TOKEN)
    second = factory.start("w2", PIPELINE_API_TOKEN=TOKEN)
    env = factory.env(PIPELINE_DATA_DIR=str(tmp_path / "cli"), PIPELINE_API_TOKEN=TOKEN)
    stock = {f"list-{n:02}": n * 10 for n in range(9)}
    for sku, units in stock.items():
        assert request("PUT", f"{first.url}/inventory/{sku}", {"available": units})[0] == 202
    want = [{"sku": s, "available": n, "reserved": 0} for s, n in sorted(stock.items())]

    def pages(url: str) -> list[dict[str, Any]] | bool:
        got, after = [], ""
        while True:
            status, body = request("GET", f"{url}/inventory?limit=4{after}")
            if status != 200:
                return False
            got += body["skus"]
            if body["next"] is None:
                return got == want and got
            after = f"&after={body['next']}"

    for worker in (first, second):  # either gathers both workers' partitions
        wait_for(lambda w=worker: pages(w.url), 60, f"{worker.name} to list every SKU")
    listed = cli(env, "stock", "list", "--limit", "5", "--json", "--url", second.url)
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout) == {"skus": want[:5], "next": "list-04"}
    table = cli(env, "stock", "list", "--after", "list-04", "--url", first.url)
    assert table.returncode == 0 and [line.split() for line in table.stdout.splitlines()] == [
        ["SKU", "AVAILABLE", "RESERVED"], *[[s["sku"], str(s["available"]), "0"]
                                           for s in want[5:]]]  # fmt: skip
    status, body = request("GET", f"{first.url}/inventory?limit=0&after=")
    assert status == 422 and [p["field"] for p in body["detail"]] == ["after", "limit"]
    status, body = request("GET", f"{first.url}/inventory?page=2")
    assert status == 422 and [p["field"] for p in body["detail"]] == ["page"]
    assert request("GET", f"{first.url}/inventory", token=None)[0] == 401

    # A customer's orders, newest first, from the database.
    for n in range(5):
        assert request("POST", f"{second.url}/orders", order("cust-list", n + 1))[0] == 201
    assert request("POST", f"{second.url}/orders", order("cust-other", 1))[0] == 201
    rows = _db(database_url, select(orders.c.order_id, orders.c.created_at)
               .where(orders.c.customer_id == "cust-list"))  # fmt: skip
    newest_first = [r.order_id for r in sorted(rows, key=lambda r: (r.created_at, r.order_id),
                                                 reverse=True)]  # fmt: skip
    got, before = [], ""
    while True:
        status, body = request("GET", f"{first.url}/customers/cust-list/orders?limit=2{before}")
        assert status == 200, body
        got += body["orders"]
        if body["next"] is None:
            break
        before = f"&before={body['next']}"
    assert [o["order_id"] for o in got] == newest_first
    assert {o["status"] for o in got} <= {"created", "confirmed", "rejected"}
    page = cli(env, "orders", "list", "--customer", "cust-list", "--limit", "3", "--json")
    assert page.returncode == 0, page.stderr
    body = json.loads(page.stdout)
    assert [o["order_id"] for o in body["orders"]] == newest_first[:3]
    rest = cli(env, "orders", "list", "--customer", "cust-list", "--before", body["next"])
    assert [line.split()[0] for line in rest.stdout.splitlines()[1:]] == newest_first[3:]
    status, body = request("GET", f"{first.url}/customers/cust-list/orders?before=zz&limit=x")
    assert status == 422 and [p["field"] for p in body["detail"]] == ["before", "limit"]
    assert request("GET", f"{first.url}/customers/nobody/orders")[1]["orders"] == []
