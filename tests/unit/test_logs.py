"""Structured logs: the ids bound around a piece of work reach every line written meanwhile."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator

import pytest

from pipeline import logs
from pipeline.settings import SettingsError, load_settings


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    out = io.StringIO()
    logger = logging.getLogger("test.logs")
    handler = logging.StreamHandler(out)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    yield logger, out
    logger.removeHandler(handler)


def lines(out: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_json_lines_carry_the_bound_ids_and_only_inside_the_block(
    captured: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, out = captured
    logs.configure(logger, "json")
    with logs.bound(order_id="o-1", event_id="e-1", partition=None):
        logger.info("placed %s", "o-1")
        with logs.bound(agent="analytics", event_id="e-2"):
            logger.warning("handled")
        logger.info("back")
    logger.info("outside")

    placed, handled, back, outside = lines(out)
    assert placed["message"] == "placed o-1" and placed["level"] == "info"
    assert (placed["order_id"], placed["event_id"]) == ("o-1", "e-1")
    assert "partition" not in placed  # None values are left out
    assert (handled["agent"], handled["event_id"], handled["order_id"]) == (
        "analytics",
        "e-2",
        "o-1",
    )
    assert back["event_id"] == "e-1" and "agent" not in back
    assert "order_id" not in outside
    assert str(placed["ts"]).endswith("+00:00")


def test_concurrent_tasks_keep_their_own_ids(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, out = captured
    logs.configure(logger, "json")

    async def work(order_id: str) -> None:
        with logs.bound(order_id=order_id):
            await asyncio.sleep(0.01)
            logger.info("done %s", order_id)

    async def both() -> None:
        await asyncio.gather(work("a"), work("b"))

    asyncio.run(both())
    assert {(line["message"], line["order_id"]) for line in lines(out)} == {
        ("done a", "a"),
        ("done b", "b"),
    }


def test_exceptions_and_text_format(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, out = captured
    logs.configure(logger, "json")
    try:
        raise ValueError("boom")
    except ValueError:
        logger.exception("failed")
    [line] = lines(out)
    assert "ValueError: boom" in str(line["exc"])

    out.truncate(0)
    out.seek(0)
    logs.configure(logger, "text")
    with logs.bound(order_id="o-9"):
        logger.info("plain")
    assert out.getvalue().rstrip().endswith("[INFO] plain order_id=o-9")


def test_unknown_formats_are_refused(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, _ = captured
    with pytest.raises(ValueError, match="xml"):
        logs.configure(logger, "xml")
    with pytest.raises(SettingsError, match="PIPELINE_LOG_FORMAT"):
        load_settings({"PIPELINE_LOG_FORMAT": "xml"})
    assert load_settings({}).log_format == "json"
    assert load_settings({"PIPELINE_LOG_EVENTS": "false"}).log_events is False
