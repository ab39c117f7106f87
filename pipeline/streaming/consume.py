"""What every agent does with a record around its own logic: decode it, run the handler,
and when that fails, retry or dead-letter the record (policy in :mod:`pipeline.domain.failures`).

An agent is ``await consume(stream, "analytics", handle, OrderCreated, OrderCancelled)``:
``handle`` gets each decoded event and applies its effect idempotently. The record's offset is
acknowledged only once the record is handled, sent to a retry topic or dead-lettered (Faust
flushes the producer before it commits offsets), so no record is dropped on any path: a
record that does not decode, whatever the decoder raised, is dead-lettered as poison. Every
copy of a record set aside keeps the original record's Kafka timestamp.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import faust
from aiokafka.errors import KafkaError
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError

from pipeline import logs
from pipeline.adapters.kafka.refusals import REFUSALS
from pipeline.app import settings
from pipeline.domain import failures
from pipeline.domain.events import InvalidEvent, decode
from pipeline.domain.failures import Failure, FailurePolicy, Headers, Origin, Unavailable
from pipeline.metrics import Metrics
from pipeline.streaming import faust_patches
from pipeline.streaming.topics import (
    dead_letters_topic,
    egress,
    redelivery_topic_name,
    retry_topics,
)

log = logging.getLogger(__name__)
# One line per event an agent handles (PIPELINE_LOG_EVENTS), with the ids bound below.
trace = logging.getLogger("pipeline.trace")

Handler = Callable[[Any], Awaitable[None]]

# A database that is down or restarting: the stores raise Unavailable (a RetryableError,
# pipeline.adapters.db.errors); a handler of an extra module that uses an engine directly
# raises the driver's errors, classed the same way (IntegrityError stays permanent).
DATABASE_TRANSIENT = (Unavailable, OperationalError, DBAPIError)


def policy_for(agent: str, **overrides: Any) -> FailurePolicy:
    """The agent's failure policy: the settings' retry schedule, the default error lists,
    and whatever the agent overrides (e.g. ``non_retryable=(..., MyError)``).

    A Kafka error is transient unless it refuses the record for good (``REFUSALS``: a record
    over ``max_request_size``, which aiokafka's ``send`` raises at once, is dead-lettered with
    its context rather than retried to the same refusal)."""
    base = FailurePolicy(
        agent,
        retryable=(*failures.TRANSIENT, *DATABASE_TRANSIENT, KafkaError),
        non_retryable=(*failures.PERMANENT, IntegrityError, *REFUSALS),
        in_place_attempts=settings.retry_in_place_attempts,
        in_place_backoff=settings.retry_backoff_seconds,
        retry_delays=settings.retry_delays,
    )
    policy = dataclasses.replace(base, **overrides)
    if len(policy.retry_delays) > len(retry_topics):
        raise ValueError(
            f"agent {agent!r} asks for {len(policy.retry_delays)} retry delays but "
            f"{len(retry_topics)} retry topics exist (PIPELINE_RETRY_DELAYS)"
        )
    return policy


async def consume(
    stream: faust.StreamT[bytes],
    agent: str,
    handle: Handler,
    *types: type[Any],
    policy: FailurePolicy | None = None,
    on_dead_letter: Callable[[Any], Awaitable[None]] | None = None,
) -> None:
    """Run ``handle`` on every event of ``types`` in ``stream``, with the failure policy.
    ``on_dead_letter(message)`` runs after a record is dead-lettered (the agent's table notes
    it as pending, for its replay)."""
    policy = policy or policy_for(agent)
    if on_dead_letter is not None:
        policy = dataclasses.replace(policy, on_dead_letter=on_dead_letter)
    # What ``stream.events()`` does, without its extra async generator per event. The event is
    # read inside the call, so nothing here references it while the next one is awaited: in a
    # rebalance Faust waits (``wait_empty``) for every message it handed to an agent until the
    # message is acknowledged or garbage. A message of a topic two agents read, handled by one
    # and dropped from the other's queue by the rebalance, stays unacknowledged; a local still
    # holding it here kept it alive and the rebalance waited for good (found by the 1-of-3
    # brokers scenario: a worker stuck in ``wait_empty`` until it was stopped).
    async for _ in stream:
        await _handle_current(stream, policy, handle, types)


async def _handle_current(
    stream: faust.StreamT[bytes],
    policy: FailurePolicy,
    handle: Handler,
    types: tuple[type[Any], ...],
) -> None:
    record = stream.current_event
    if record is not None:
        await handle_record(record.message, policy, handle, types)


async def handle_record(
    message: Any, policy: FailurePolicy, handle: Handler, types: tuple[type[Any], ...]
) -> None:
    where = {"agent": policy.agent, "topic": message.topic, "partition": message.partition,
             "offset": message.offset}  # fmt: skip
    try:
        failures.check_header_keys(message.headers)
        event = decode(message.value, *types)
    except InvalidEvent as exc:
        with logs.bound(**where):
            await _dead_letter(message, policy, failures.POISON, exc, attempts=1)
        return
    with logs.bound(**where, event_id=event.event_id, order_id=getattr(event, "order_id", None)):
        await _handle_event(message, event, policy, handle)


async def _handle_event(message: Any, event: Any, policy: FailurePolicy, handle: Handler) -> None:
    attempt = 0
    while True:
        attempt += 1
        try:
            await handle(event)
        except Exception as exc:  # noqa: BLE001 - every failure is classified, none is lost
            failure = exc
        else:
            _count_handled(message, policy.agent)
            trace.info("%s handled %s", policy.agent, type(event).__name__)
            return
        transient = policy.is_transient(failure)
        log.warning(
            "%s failed on %s[%s]@%s (attempt %d, %s): %r", policy.agent, message.topic,
            message.partition, message.offset, attempt,
            "transient" if transient else "permanent", failure,
        )  # fmt: skip
        if not transient or attempt >= policy.in_place_attempts:
            break
        _metrics().retries.labels(policy.agent, type(failure).__name__, "in-place").inc()
        await asyncio.sleep(failures.backoff(attempt, policy.in_place_backoff))
    await _after_failure(message, policy, failure, attempt)


async def _after_failure(
    message: Any, policy: FailurePolicy, exc: Exception, attempts: int
) -> None:
    headers = failures.header_map(message.headers)
    state = _failure(message, headers, policy, attempts)
    step, tier = failures.route(policy, state, exc)
    if step != failures.RETRY:
        await _send_dead_letter(message, headers, state, policy, step, exc)
        return
    due_at = time.time() + policy.retry_delays[tier]
    state = dataclasses.replace(state, retry_tier=tier + 1)
    out = failures.retry_headers(failures.original_headers(headers), state, due_at, exc)
    await send_reliably(retry_topics[tier].get_topic_name(), message.key, message.value, out,
                        timestamp_ms=state.origin.timestamp_ms)  # fmt: skip
    _metrics().retries.labels(policy.agent, type(exc).__name__, f"topic-{tier + 1}").inc()


def _failure(
    message: Any, headers: dict[str, bytes], policy: FailurePolicy, attempts: int
) -> Failure:
    timestamp = message.timestamp
    # Failure headers are ours only on the agent's redelivery topic (retries, replays); on
    # its source topic the record is fresh, and such headers are anybody's: ignored.
    ours = headers if message.topic == redelivery_topic_name(policy.agent) else {}
    origin = Origin.of(ours, message.topic, message.partition, message.offset,
                       float(timestamp) if timestamp is not None else None)  # fmt: skip
    state = Failure.of(policy.agent, ours, origin, failures.now_utc())
    return dataclasses.replace(state, attempts=state.attempts + attempts)


async def _dead_letter(
    message: Any, policy: FailurePolicy, reason: str, exc: BaseException, *, attempts: int
) -> None:
    headers = failures.header_map(message.headers)
    state = _failure(message, headers, policy, attempts)
    await _send_dead_letter(message, headers, state, policy, reason, exc)


async def _send_dead_letter(
    message: Any,
    headers: dict[str, bytes],
    state: Failure,
    policy: FailurePolicy,
    reason: str,
    exc: BaseException,
) -> None:
    out = failures.dead_letter_headers(
        failures.original_headers(headers), state, reason, exc, failures.now_utc()
    )
    await send_reliably(dead_letters_topic.get_topic_name(), message.key, message.value, out,
                        timestamp_ms=state.origin.timestamp_ms)  # fmt: skip
    log.error(
        "%s dead-lettered %s[%s]@%s (%s): %r", policy.agent, state.origin.topic,
        state.origin.partition, state.origin.offset, reason, exc,
    )  # fmt: skip
    _metrics().dead_letters.labels(policy.agent, reason, type(exc).__name__).inc()
    if policy.on_dead_letter is not None:
        # After the dead letter is acknowledged, before this record's offset is: a crash in
        # between handles the record again (a second dead letter, one of which replays).
        await policy.on_dead_letter(message)


async def send_reliably(
    topic: str,
    key: bytes | None,
    value: bytes | None,
    headers: Headers,
    *,
    partition: int | None = None,
    timestamp_ms: int | None = None,
) -> None:
    """Send and wait for the broker's acknowledgement, retrying until it comes: the record
    being set aside is acknowledged as soon as this returns, so this must not give up.

    Unless the broker refuses the record for good (:mod:`pipeline.adapters.kafka.refusals`: the
    dead-letter topic's ``max.message.bytes``, an unauthorized topic...), which no retry cures:
    then no offset is committed any more (:func:`faust_patches.refuse_commits`, so the record
    being set aside is not committed over when Faust acknowledges the event its agent crashed
    on) and the refusal is raised; the worker stops loudly, as for any send that failed.

    ``timestamp_ms`` is the original record's (:attr:`Origin.timestamp_ms`), so a retried or
    replayed record keeps its place in windows by record time; None stamps it now. Through
    the worker's egress to the aiokafka client itself, as ``topics.publish``: Faust's
    ``Producer.send`` takes seconds and truncates them to milliseconds (one off, often), and
    wraps a ``KafkaError`` raised at send time into a ``ProducerSendError`` a retry would not
    catch.
    """
    try:
        await egress.deliver_reliably(topic, value, key=key, headers=headers,
                                      partition=partition, timestamp_ms=timestamp_ms)  # fmt: skip
    except Exception as exc:  # refused for good: deliver_reliably retries what may pass
        faust_patches.refuse_commits(topic, exc)
        raise


def _count_handled(message: Any, agent: str) -> None:
    metrics = _metrics()
    children = _handled_children.get(agent)
    if children is None or children[0] is not metrics:  # ``labels()`` per event costs a lock
        children = _handled_children[agent] = (
            metrics, metrics.events_processed.labels(agent), metrics.event_latency.labels(agent)
        )  # fmt: skip
    children[1].inc()
    if message.timestamp is not None:  # seconds since the epoch (Faust converts Kafka's ms)
        children[2].observe(max(0.0, time.time() - message.timestamp))


_handled_children: dict[str, tuple[Any, Any, Any]] = {}


# The worker's metrics, handed over by its runtime (``pipeline.bootstrap``) when it is built; a
# consume loop run without one (the unit tests) counts into a registry of its own.
_registry: Metrics | None = None


def use_metrics(metrics: Metrics) -> None:
    global _registry
    _registry = metrics


def _metrics() -> Metrics:
    global _registry
    if _registry is None:
        _registry = Metrics()
    return _registry


async def with_db_retries(
    action: Callable[[], Awaitable[Any]], *, attempts: int = 8, first_delay: float = 0.1
) -> Any:
    """Run a database action, retrying connection-level failures with back-off (for the
    bookkeeping agents outside the failure policy: they have nowhere to dead-letter to)."""
    delay = first_delay
    for attempt in range(1, attempts + 1):
        try:
            return await action()
        except (*DATABASE_TRANSIENT, OSError) as exc:
            if attempt == attempts:
                raise
            log.warning("database call failed (%s), retry %d in %.1fs", exc, attempt, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
    raise AssertionError("unreachable")  # pragma: no cover
