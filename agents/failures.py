"""The failure plumbing every worker runs: the retry topics' holders and the dead-letter index.

Holders: one agent per retry topic. Each record there waits until its due time (in its
headers), then goes back to the agent that failed it, through that agent's redelivery topic,
into the partition it first came from. Every record in a retry topic got the same delay, so
records fall due in the order they arrive and waiting for the first one holds back nothing
that is due before it; the source topics never wait on a retry. While partitions are being
reassigned a holder forwards what it holds at once rather than stall the rebalance: a retry
that comes early is still a retry, and nothing is lost.

Index: the dead-letter topic is indexed into the database (``pipeline.dead_letters``), so
any worker can list and replay dead letters.

Guarantees: a held record is acknowledged only after its redelivery was acknowledged by the
broker (at least once; agents are idempotent). Concurrency stays 1.
"""

from __future__ import annotations

import asyncio
import logging
import time
from functools import partial

import faust

from pipeline import errors
from pipeline.app import app
from pipeline.consume import send_reliably, with_db_retries
from pipeline.dead_letters import DeadLetter
from pipeline.runtime import runtime
from pipeline.topics import dead_letters_topic, redelivery_topic_name, retry_topics

log = logging.getLogger(__name__)
SLICE = 0.5


async def hold_until_due(stream: faust.StreamT[bytes]) -> None:
    async for record in stream.events():
        message = record.message
        headers = errors.header_map(message.headers)
        try:
            agent = headers[errors.AGENT].decode()
            due_at = float(headers[errors.DUE_AT])
            partition = int(headers[errors.ORIGINAL_PARTITION])
        except (KeyError, ValueError) as exc:
            log.error("retry record %s[%s]@%s lacks its routing headers (%r); dead-lettering it",
                      message.topic, message.partition, message.offset, exc)  # fmt: skip
            out = [*headers.items(), (errors.REASON, errors.POISON.encode())]
            await send_reliably(dead_letters_topic.get_topic_name(), message.key, message.value,
                                [*out, *errors.exception_headers(exc)])  # fmt: skip
            continue
        # Sleep in slices: a rebalance must not wait for the longest delay.
        while (wait := due_at - time.time()) > 0 and not app.rebalancing:  # noqa: ASYNC110
            await asyncio.sleep(min(wait, SLICE))
        out = [(k, v) for k, v in headers.items() if k != errors.DUE_AT]
        await send_reliably(redelivery_topic_name(agent), message.key, message.value, out,
                            partition=partition)  # fmt: skip


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
