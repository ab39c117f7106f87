"""Not a bug but a cost on every event, found by profiling ``make bench``.

Three turns of the event loop per record published (faust-streaming 0.15.3,
``Topic._get_producer``): every ``Topic.publish_message`` — each table changelog record, through
the producer buffer — first asks ``app.maybe_start_producer()``, which mode's ``@stampede``
wraps in three ``asyncio.sleep(0)``, even when the producer runs. The buffer's drain task so
sends one record per three turns while an agent writes many per turn: the buffer grew to
thousands of records and held the fetcher back (``make bench``). :func:`_get_producer` returns
the running producer at once and leaves every other case to Faust.
"""

from __future__ import annotations

from typing import Any

import faust.topics as faust_topics

STOCK_GET_PRODUCER = faust_topics.Topic._get_producer


async def _get_producer(self: Any) -> Any:
    """Faust's ``Topic._get_producer`` without the three loop turns once the producer runs."""
    app = self.app
    if not app.in_transaction:
        producer = app.producer
        if producer.started:
            return producer
    return await STOCK_GET_PRODUCER(self)


def install() -> None:
    faust_topics.Topic._get_producer = _get_producer  # type: ignore[method-assign]
