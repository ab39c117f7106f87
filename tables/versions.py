"""Per-key versions in table values, so a frozen worker's late changelog records lose.

A worker frozen past its session timeout (a zombie) loses its partitions; the new owner reads
the changelog, handles again the events the zombie had not committed, and writes on. But the
zombie's changelog records were still in its producer's buffer: when it resumes they are sent,
*after* the new owner's records for the same keys. Kafka cannot refuse them (no transactions,
see the README), so the changelog's last record for such a key is the zombie's stale value, and
whoever reads the changelog — a standby, the next owner, a worker rebuilt from scratch — would
apply it last: a customer's stats would go back.

So every value of our tables carries a version (``"v"``, first in its JSON): one more than the
version of the value it replaces, which is what its writer read. The new owner starts from what
it recovered and counts on from there, so by the time the zombie's record arrives, the key's
value has a version at least as high. :func:`apply_changelog_batch` (installed into Faust's
RocksDB store) applies a changelog record only when its version is above the one stored (or
already applied in the same batch): whatever order the records arrive in, the store keeps the
newest value. Equal versions keep the first: the same update, or the zombie's. Deletions and
values without a version are applied as before.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any

import faust.stores.rocksdb as faust_rocksdb
from faust.streams import current_event

from pipeline import faust_fixes
from pipeline.topics import kafka_producer
from tables import horizon

log = logging.getLogger(__name__)

VERSION = "v"
_PREFIX = b'{"v":'


def stored(table: Any, key: bytes) -> bytes | None:
    """The bytes ``table`` holds for ``key``, in one store lookup.

    ``table.get(key)`` looks twice: Faust's table ``__getitem__`` asks the store whether it
    holds the key, then reads it, two RocksDB gets per read. Its store (``table.data``) answers
    in one, for the current event's partition inside an agent as the table does.
    """
    value: bytes | None = table.data.get(key)
    return value


async def write(table: Any, key: bytes, version: int, value: dict[str, Any]) -> None:
    """``table[key] = encode(version, value)``, sending the changelog record itself.

    Faust's ``Table.__setitem__`` queues the changelog record through ``Topic.send_soon``: a
    future message, the producer buffer's queue and its task, the topic's publish path and two
    callbacks per record, in our profile more than the send itself (``make bench``). This writes
    the store as the table does and sends the record straight to the app's producer, as
    :func:`pipeline.topics.publish` does with derived events: the same topic, key, value and
    partition (the current event's), the same recovery mark once the broker acknowledges it
    (by :func:`pipeline.faust_fixes.move_recovery_mark`'s rule, once per turn of the event loop
    for that turn's acknowledgements), and a stronger guarantee: the offset of the event that
    caused the write is committed only once the record is delivered
    (:func:`pipeline.faust_fixes.track_delivery`); a record the broker refuses stops the worker
    with that offset uncommitted. The record is sent before the store is written, so one the
    producer refuses at once (over ``max_request_size``) raises to the agent and leaves the
    store as it was, for the retry to apply again. A value over
    :data:`tables.horizon.MAX_VALUE_BYTES` is refused here, before anything is sent
    (:class:`tables.horizon.ValueTooLarge`, a permanent error: the event is dead-lettered saying
    why, rather than the broker refusing the record and the worker stopping on it).
    """
    event = _current_event(table)
    raw = horizon.check_size(encode(version, value), f"{table.name} {key[:64]!r}")
    await _send(table, event, key, raw)
    table.data[key] = raw  # the store, for the current event's partition


async def delete(table: Any, key: bytes) -> None:
    """``del table[key]`` (``table.pop``), sending the tombstone itself as :func:`write` does.

    Through Faust's ``pop`` the tombstone went the buffer's way, acknowledged through more
    callbacks than the table's writes: an order's write at offset n and its deletion at n + 1,
    acknowledged in one batch, reached the recovery mark as n + 1 then n, and the mark stuck at
    n (:func:`pipeline.faust_fixes.move_recovery_mark`). One path per table keeps them in order.
    The tombstone is sent even when the key is not stored: a repeat is harmless, and after a
    crash it is how a changelog that missed the first one gets it.
    """
    event = _current_event(table)
    await _send(table, event, key, None)
    table.data.pop(key, None)


async def resend(table: Any, key: bytes) -> None:
    """Send ``key``'s stored value to the changelog again, for an event already applied.

    A worker killed before the broker acknowledged its changelog records keeps their RocksDB
    writes, and the offsets of their events are not committed. Restarted on the same state,
    it finds each redelivered event already applied and writes nothing, so the changelog would
    lack that event's effect until the key is written again, and a standby or a worker
    rebuilding the table would miss it for good. An agent that finds an event already applied
    calls this: the record has the stored value's version, so a reader that has it already keeps
    its own (:func:`apply_changelog_batch`), and one that missed it catches up.
    """
    event = _current_event(table)
    raw = stored(table, key)
    if raw is not None:
        await _send(table, event, key, raw)


def _current_event(table: Any) -> Any:
    event = current_event()
    if event is None:
        raise RuntimeError(f"{table.name}: tables are written inside an agent, for an event")
    return event


async def _send(table: Any, event: Any, key: bytes, raw: bytes | None) -> None:
    topic = table.changelog_topic.get_topic_name()
    delivery = await kafka_producer().send(topic, raw, key=key, partition=event.message.partition)
    faust_fixes.expect_delivery(delivery, topic)
    delivery.add_done_callback(partial(_on_changelog_sent, table))


# Changelog offsets acknowledged in this turn of the event loop, by table and partition: the
# recovery mark (a RocksDB read and write) moves once per turn, not once per record.
_acknowledged: dict[tuple[int, Any], tuple[Any, list[int]]] = {}


def _on_changelog_sent(table: Any, delivery: asyncio.Future[Any]) -> None:
    if not faust_fixes.settle_delivery(delivery):
        return  # a failure: recorded, and no offset is committed any more
    meta = delivery.result()
    slot = (id(table), meta.topic_partition)
    pending = _acknowledged.get(slot)
    if pending is None:
        pending = _acknowledged[slot] = (table, [])
        asyncio.get_running_loop().call_soon(_move_mark, slot)
    pending[1].append(meta.offset)


def _move_mark(slot: tuple[int, Any]) -> None:
    table, offsets = _acknowledged.pop(slot)
    faust_fixes.move_recovery_mark(table, slot[1], offsets)


def encode(version: int, value: dict[str, Any]) -> bytes:
    """A table value's bytes: its version first, then the value's fields."""
    return json.dumps({VERSION: version, **value}, separators=(",", ":")).encode()


def version_of(raw: bytes | None) -> int | None:
    """The version at the start of a stored value, without decoding the rest of it."""
    if not raw or not raw.startswith(_PREFIX):
        return None
    end = raw.find(b",", len(_PREFIX))
    try:
        return int(raw[len(_PREFIX) : end if end > 0 else len(raw) - 1])
    except ValueError:
        return None


STOCK_APPLY = faust_rocksdb.Store.apply_changelog_batch


def apply_changelog_batch(
    self: Any,
    batch: Iterable[Any],
    to_key: Callable[[Any], Any],
    to_value: Callable[[Any], Any],
) -> None:
    """Faust's ``apply_changelog_batch``, but a record older than the stored value is not
    applied (it is still counted as read, so recovery resumes after it)."""
    events = list(batch)
    newest: dict[tuple[int, bytes], int | None] = {}
    kept = []
    for event in events:
        msg = event.message
        slot = (msg.partition, msg.key)
        incoming = None if msg.value is None else version_of(msg.value)
        if incoming is not None:
            if slot in newest:
                current = newest[slot]
            else:
                current = version_of(self._db_for_partition(msg.partition).get(msg.key))
            if current is not None and incoming <= current:
                log.warning(
                    "%s: changelog %s[%d]@%d has version %d of a key already at %d (a late "
                    "write of a worker that lost the partition): not applied",
                    self.table.name, msg.topic, msg.partition, msg.offset, incoming, current,
                )  # fmt: skip
                continue
        newest[slot] = incoming
        kept.append(event)
    STOCK_APPLY(self, kept, to_key, to_value)
    read_up_to: dict[Any, int] = {}
    for event in events:
        tp, offset = event.message.tp, event.message.offset
        read_up_to[tp] = max(offset, read_up_to.get(tp, offset))
    for tp, offset in read_up_to.items():
        self.set_persisted_offset(tp, offset)


def install() -> None:
    faust_rocksdb.Store.apply_changelog_batch = apply_changelog_batch  # type: ignore[method-assign]
