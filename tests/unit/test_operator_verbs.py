"""The operator's verbs offline: requests checked field by field, keyset cursors and the merge
of workers' shares, the services over the in-memory stores, and the commands' usage errors.
Against real workers, databases and Kafka: tests/integration/test_operator_verbs.py."""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from pipeline.adapters.memory import (
    MemoryDatabase,
    MemoryDeadLetterStore,
    MemoryOrderStore,
    MemoryOutboxAdmin,
    MemoryOutboxStore,
)
from pipeline.cli.main import run
from pipeline.domain import paging
from pipeline.domain.audit import Audit
from pipeline.domain.dashboard import dead_letter_summary
from pipeline.domain.dead_letters import BadFilter, Filter, parse_discard_request
from pipeline.domain.outbox import parse_discard_request as parse_outbox_discard
from pipeline.domain.outbox import parse_requeue_request
from pipeline.domain.paging import BadRequest, merge_pages, order_cursor, parse_order_cursor
from pipeline.services.dead_letters import DeadLetters
from pipeline.services.outbox_admin import OutboxOperations
from tests.conftest import T0, order_created
from tests.repository_contract import letter


def fields(exc: pytest.ExceptionInfo[BadRequest]) -> list[str]:
    return [p["field"] for p in exc.value.problems]


# -- paging -----------------------------------------------------------------------------------


@pytest.mark.parametrize("raw", ["0", "501", "-1", "ten", "1.5", True, 3.0, "", "\u00b2", "\u0663"])
def test_a_page_size_outside_1_to_500_is_refused(raw: Any) -> None:
    problems: list[dict[str, str]] = []
    paging.page_size(raw, problems)
    assert problems == [{"field": "limit", "message": "must be an integer from 1 to 500"}]


def test_a_page_size_defaults_and_reads_query_strings() -> None:
    problems: list[dict[str, str]] = []
    assert (paging.page_size(None, problems), paging.page_size("500", problems)) == (100, 500)
    assert paging.row_id("7", problems) == 7 and paging.key("sku-1", problems, "after") == "sku-1"
    assert problems == []
    paging.row_id("0", problems)
    paging.key("x" * 65, problems, "after")
    paging.key("a\x00b", problems, "customer_id")  # PostgreSQL refuses NUL in text
    assert [p["field"] for p in problems] == ["after", "after", "customer_id"]


def test_an_order_cursor_round_trips_and_anything_else_is_refused() -> None:
    at = T0 + timedelta(microseconds=123)
    cursor = order_cursor(at, "o-1")
    problems: list[dict[str, str]] = []
    assert parse_order_cursor(cursor, problems) == (at, "o-1") and problems == []
    for bad in [
        "",
        "not-base64!",
        order_cursor(at, "o")[:-3],
        "W10",
        "x" * 300,
        "WyIyMDI2LTExLTAxVDEyOjAwOjAwIiwgIm8iXQ",
    ]:  # fmt: skip  (the last: a naive time)
        problems = []
        assert parse_order_cursor(bad, problems) is None
        assert problems[0]["field"] == "before", bad


def test_shares_merge_into_one_page_with_the_cursor_of_the_next() -> None:
    a = [{"sku": "a"}, {"sku": "c"}, {"sku": "e"}]
    b = [{"sku": "b"}, {"sku": "d"}]
    assert merge_pages([a, b], "sku", 3) == ([{"sku": "a"}, {"sku": "b"}, {"sku": "c"}], "c")
    assert merge_pages([a, b], "sku", 5) == (sorted(a + b, key=lambda s: s["sku"]), None)
    assert merge_pages([a, a[:1]], "sku", 5)[0] == a  # a key two workers answered: once
    assert merge_pages([[], []], "sku", 5) == ([], None)
    # Byte order of the UTF-8, as the store keeps keys: "Z" < "a" < "é".
    assert [s["sku"] for s in merge_pages([[{"sku": "é"}, {"sku": "a"}], [{"sku": "Z"}]],
                                          "sku", 5)[0]] == ["Z", "a", "é"]  # fmt: skip


# -- requests ---------------------------------------------------------------------------------


def test_a_requeue_names_its_rows_or_says_all() -> None:
    wanted = parse_requeue_request({"ids": [3, 1, 3]}, by="http:1.2.3.4")
    assert (wanted.ids, wanted.everything, wanted.out_of_order, wanted.by) == (
        (3, 1), False, False, "http:1.2.3.4")  # fmt: skip
    assert parse_requeue_request({"all": True, "out_of_order": True, "by": "ann", "why": "x"},
                                 by="-").everything  # fmt: skip
    for body, at_fault in [
        ({}, ["ids"]),
        ({"all": False}, ["ids"]),
        ({"ids": [1], "all": True}, ["all"]),
        ({"ids": []}, ["ids"]),
        ({"ids": ["1"]}, ["ids"]),
        ({"ids": [True]}, ["ids"]),
        ({"ids": list(range(1, 502))}, ["ids"]),
        ({"all": "yes", "out_of_order": 1}, ["all", "out_of_order", "ids"]),
        ({"all": True, "by": ""}, ["by"]),
        ({"all": True, "why": 5}, ["why"]),
        ({"all": True, "force": True}, ["force"]),
        ({"all": True, "why": None, "by": None}, ["by", "why"]),  # null is not "left out"
    ]:
        with pytest.raises(BadRequest) as exc:
            parse_requeue_request(body, by="cli")
        assert fields(exc) == at_fault, body
    with pytest.raises(BadRequest) as exc:
        parse_requeue_request([1, 2], by="cli")
    assert fields(exc) == ["body"]


def test_a_discard_says_why() -> None:
    wanted = parse_outbox_discard({"ids": [5], "why": " junk "}, by="cli:ann@host")
    assert (wanted.ids, wanted.by, wanted.reason) == ((5,), "cli:ann@host", "junk")
    with pytest.raises(BadRequest) as exc:
        parse_outbox_discard({"ids": [5]}, by="cli")
    assert fields(exc) == ["why"]
    with pytest.raises(BadRequest) as exc:
        parse_outbox_discard({"all": True, "why": "   "}, by="cli")
    assert fields(exc) == ["all"]
    with pytest.raises(BadRequest) as exc:
        parse_outbox_discard({"why": "x" * 1001}, by="cli")
    assert fields(exc) == ["ids", "why"]


def test_a_dead_letter_discard_selects_as_replay_does_and_says_why() -> None:
    where, by, why = parse_discard_request(
        {"reason": "poison", "agent": "analytics", "why": "garbage from a test producer"},
        by="http:1.2.3.4",
    )
    assert (where.reason, where.agent, where.status, by) == (
        "poison", "analytics", None, "http:1.2.3.4")  # fmt: skip
    assert why == "garbage from a test producer"
    with pytest.raises(BadFilter) as exc:
        parse_discard_request({"why": "x"}, by="cli")
    assert fields(exc) == ["body"] and "say what to discard" in str(exc.value)
    with pytest.raises(BadFilter) as exc:
        parse_discard_request({"all": True, "since": "yesterday"}, by="cli")
    assert fields(exc) == ["since", "why"]


# -- services over memory ---------------------------------------------------------------------


async def test_discarded_dead_letters_are_neither_replayed_nor_counted_open() -> None:
    store = MemoryDeadLetterStore(MemoryDatabase())
    for n in (1, 2, 3):
        await store.add(letter(n, event_id=f"e-{n}", reason="poison" if n < 3 else "permanent"))
    sent: list[bytes | None] = []

    async def send(topic: str, key: Any, value: Any, headers: Any, partition: int) -> None:
        sent.append(key)

    service = DeadLetters(store, send, replay_limit=3, redelivery_topic=lambda a: f"r.{a}",
                          known_agents=lambda: ["analytics"])  # fmt: skip
    who = Audit("ann", "test data", T0)
    result = await service.discard(Filter(reason="poison"), who)
    assert result.to_json() == {"discarded": ["0-1", "0-2"], "refused": []}
    again = await service.discard(Filter(ids=("0-1",)), who)
    assert again.discarded == [] and again.refused == [{"id": "0-1", "reason": "discarded already"}]
    replayed = await service.replay(Filter(), "cli")  # as `dlt replay --all`
    assert replayed.replayed == ["0-3"] and replayed.refused == [] and len(sent) == 1
    by_id = await service.replay(Filter(ids=("0-1",)), "cli")
    assert by_id.replayed == [] and by_id.refused[0]["reason"] == "discarded: never replayed"
    summary = dead_letter_summary(await store.counts())
    assert (summary["total"], summary["open"]) == (3, 0)


async def test_requeue_all_goes_through_every_page_of_parked_rows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("pipeline.services.outbox_admin.MAX_PAGE", 2)
    db = MemoryDatabase()
    orders, outbox = MemoryOrderStore(db), MemoryOutboxStore(db)
    now = order_created().created_at
    for n in range(5):
        await orders.create_order(order_created(f"c{n}", at=now + timedelta(seconds=n)))
    ids = [r.id for r in await outbox.pending(10)]
    await outbox.record([], [(i, "too large") for i in ids], now)
    service = OutboxOperations(MemoryOutboxAdmin(db), retention=timedelta(days=10_000))
    page, after = await service.parked(None, 3)
    assert [r.id for r in page] == ids[:3] and after == ids[2]
    page, after = await service.parked(after, 3)
    assert [r.id for r in page] == ids[3:] and after is None
    wanted = parse_requeue_request({"all": True}, by="cli")
    result = await service.requeue(wanted)
    assert result.done == ids and result.refused == []
    assert [r.id for r in await outbox.pending(10)] == ids
    assert [a["actor"] for a in db.actions] == ["cli"] * 5


# -- commands ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["outbox", "discard", "3"], "the following arguments are required: --why"),
        (["outbox", "discard", "x", "--why", "junk"], "'x' is not an outbox row id"),
        (["outbox", "parked", "--limit", "0"], "'0' must be a whole number from 1 to 500"),
        (["orders", "list"], "the following arguments are required: --customer"),
        (["dlt", "discard", "--all"], "the following arguments are required: --why"),
        (["stock", "list", "--limit", "501"], "'501' must be a whole number from 1 to 500"),
    ],
)
def test_bad_arguments_exit_2_naming_the_argument(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        run(argv)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["outbox", "requeue"], "error: ID: name the rows (ids) or send all: true"),
        (["outbox", "requeue", "1", "--all"], "error: --all: give ids or all: true, not both"),
        (["outbox", "discard", "1", "--why", " "], "error: --why: must say why"),
        (["orders", "list", "--customer", "c", "--before", "zz"], "error: --before: must be a"),
        (["orders", "list", "--customer", "x" * 65], "error: --customer: must be 1 to 64"),
        (["dlt", "discard", "--why", "x"], "error: --body: say what to discard"),
    ],
)
def test_incomplete_requests_exit_2_with_what_to_do(
    argv: list[str], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'none.db'}")
    assert run(argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "none.db").exists()


def test_verbs_on_a_missing_database_create_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nowhere" / "pipeline.db"
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{missing}")
    for argv in (["outbox", "parked"], ["outbox", "requeue", "--all"],
                 ["outbox", "discard", "1", "--why", "x"], ["orders", "list", "--customer", "c"],
                 ["dlt", "discard", "--all", "--why", "x"]):  # fmt: skip
        assert run(argv) == 2, argv
        assert "no database at" in capsys.readouterr().err
    assert not missing.parent.exists()


def test_a_memory_letter_is_a_dataclass_copy() -> None:
    # The contract's letters are frozen: discarding in memory replaces, never mutates, them.
    one = letter(1)
    assert (
        dataclasses.replace(one, status="discarded").status == "discarded" and one.status == "open"
    )
