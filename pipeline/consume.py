"""What every agent does with a record before its own logic: decode it, or set it aside."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import faust
from sqlalchemy.exc import DBAPIError, OperationalError

from pipeline.events import InvalidEvent, decode

log = logging.getLogger(__name__)
T = TypeVar("T")


async def decoded(
    stream: faust.StreamT[bytes], *types: type[Any]
) -> AsyncIterator[tuple[faust.EventT[Any], Any]]:
    """Yield each record with its decoded event. A record that is not a valid event of these
    types is logged with its position and skipped (dead-lettering is the failure-handling
    work's), so the partition keeps flowing. The event is one of ``types`` (typed ``Any``:
    a union of varargs types has no spelling)."""
    async for record in stream.events():
        try:
            event = decode(record.value, *types)
        except InvalidEvent as exc:
            msg = record.message
            log.warning(
                "skipping undecodable record %s[%s]@%s: %s",
                msg.topic, msg.partition, msg.offset, exc,
            )  # fmt: skip
            continue
        yield record, event


async def with_db_retries(
    action: Callable[[], Awaitable[T]], *, attempts: int = 8, first_delay: float = 0.1
) -> T:
    """Run a database action, retrying connection-level failures with back-off: the agent
    must not skip an effect because the database blinked."""
    delay = first_delay
    for attempt in range(1, attempts + 1):
        try:
            return await action()
        except (OperationalError, DBAPIError, OSError) as exc:
            if attempt == attempts:
                raise
            log.warning("database call failed (%s), retry %d in %.1fs", exc, attempt, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
    raise AssertionError("unreachable")  # pragma: no cover
