"""The failure plumbing every worker runs: the retry topics' holders and the dead-letter index.

Holders: one agent per retry topic. Each record there waits until its due time (in its
headers), then goes back to the agent that failed it, through that agent's redelivery topic,
into the partition it first came from. Every record in a retry topic got the same delay, so
records fall due in the order they arrive and waiting for the first one holds back nothing
that is due before it; the source topics never wait on a retry. While partitions are being
reassigned a holder forwards what it holds at once rather than stall the rebalance: a retry
that comes early is still a retry, and nothing is lost. A record goes back with the Kafka
timestamp of its first delivery, so windows by record time count it where they did then. A
retry record whose routing headers are missing or garbled (an unknown agent, a partition the
redelivery topic lacks, no due time) is dead-lettered as poison; a due time beyond the
longest delay is cut to it.

Index: the dead-letter topic is indexed into the database (``pipeline.services.dead_letters``), so
any worker can list and replay dead letters.

Guarantees: a held record is acknowledged only after its redelivery was acknowledged by the
broker (at least once; agents are idempotent). Concurrency stays 1.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from functools import partial
from typing import Any

import faust

from pipeline.app import app, settings
from pipeline.bootstrap import runtime
from pipeline.domain import failures
from pipeline.domain.dead_letters import DeadLetter
from pipeline.streaming.consume import send_reliably, with_db_retries
from pipeline.streaming.topics import (
    AGENT_SOURCES,
    dead_letters_topic,
    redelivery_topic_name,
    retry_topics,
)

log = logging.getLogger(__name__)
SLICE = 0.5
# No record of ours is due later than this after it is read: a due time beyond it is not
# ours, and holding it would hold back every record behind it.
LONGEST_DELAY = max(settings.retry_delays, default=0.0)


class BadRoute(ValueError):
    """A retry record whose headers do not say where it goes back to."""


async def hold_until_due(stream: faust.StreamT[bytes]) -> None:
    async for record in stream.events():
        message = record.message
        headers = failures.header_map(message.headers)
        origin = failures.Origin.of(headers, message.topic, message.partition, message.offset,
                                  message.timestamp)  # fmt: skip
        try:
            agent, partition, due_at = _route(headers)
        except BadRoute as exc:
            await _dead_letter(message, headers, origin, exc)
            continue
        due_at = min(due_at, time.time() + LONGEST_DELAY)
        # Sleep in slices: a rebalance must not wait for the longest delay.
        while (wait := due_at - time.time()) > 0 and not app.rebalancing:  # noqa: ASYNC110
            await asyncio.sleep(min(wait, SLICE))
        out = [(k, v) for k, v in headers.items() if k != failures.DUE_AT]
        # With the first delivery's timestamp, not this retry record's (they are the same
        # unless the retry record was written by something else than ``consume``).
        sent_at = origin.timestamp_ms
        await send_reliably(redelivery_topic_name(agent), message.key, message.value, out,
                            partition=partition, timestamp_ms=sent_at)  # fmt: skip


def _route(headers: dict[str, bytes]) -> tuple[str, int, float]:
    """The agent a retry record goes back to, the partition (the one it first came from,
    which must exist in that agent's redelivery topic) and when, checked."""
    agent = headers.get(failures.AGENT, b"").decode("utf-8", "replace")
    source = AGENT_SOURCES.get(agent)
    if source is None:
        raise BadRoute(f"unknown agent {agent!r:.80} in {failures.AGENT}")
    if failures.ORIGINAL_TOPIC not in headers:
        raise BadRoute(f"no {failures.ORIGINAL_TOPIC}")
    partition = failures.header_int(headers, failures.ORIGINAL_PARTITION)
    partitions = source.partitions or settings.partitions
    if partition is None or partition >= partitions:
        shown = headers.get(failures.ORIGINAL_PARTITION, b"")[:40]
        raise BadRoute(f"partition {shown.decode('utf-8', 'replace')} is not one of the "
                       f"{partitions} of {agent!r}'s redelivery topic")  # fmt: skip
    try:
        due_at = float(headers.get(failures.DUE_AT) or b"")
    except ValueError:
        due_at = math.nan
    if math.isnan(due_at):
        raise BadRoute(f"{failures.DUE_AT} is not a due time")
    return agent, partition, due_at


async def _dead_letter(
    message: Any, headers: dict[str, bytes], origin: failures.Origin, exc: Exception
) -> None:
    log.error("retry record %s[%s]@%s has bad routing headers (%r); dead-lettering it",
              message.topic, message.partition, message.offset, exc)  # fmt: skip
    raw_agent = headers.get(failures.AGENT, b"unknown").decode("utf-8", "replace")
    now = failures.now_utc()
    state = failures.Failure.of(raw_agent, headers, origin, now)
    out = failures.dead_letter_headers(failures.original_headers(headers), state, failures.POISON,
                                     exc, now)  # fmt: skip
    await send_reliably(dead_letters_topic.get_topic_name(), message.key, message.value, out,
                        timestamp_ms=origin.timestamp_ms)  # fmt: skip


for _tier, _topic in enumerate(retry_topics, start=1):
    app.agent(_topic, name=f"agents.failures.hold_retry_{_tier}", concurrency=1)(hold_until_due)


@app.agent(dead_letters_topic, concurrency=1)
async def index_dead_letters(stream: faust.StreamT[bytes]) -> None:
    async for record in stream.events():
        m = record.message
        letter = DeadLetter.from_record(
            m.partition, m.offset, m.key, m.value, m.headers, m.timestamp
        )
        await with_db_retries(partial(runtime.dead_letter_store.add, letter), attempts=1000)
