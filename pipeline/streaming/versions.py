"""Per-key versions in table values, so a frozen worker's late changelog records lose.

A worker frozen past its session timeout (a zombie) loses its partitions; the new owner reads the
changelog, handles again the events the zombie had not committed, and writes on. But the zombie's
changelog records were still in its producer's buffer: when it resumes they are sent, *after* the
new owner's records for the same keys. Kafka cannot refuse them (no transactions, see
docs/guarantees.md), so the changelog's last record for such a key is the zombie's stale value, and
whoever reads the changelog — a standby, the next owner, a worker rebuilt from scratch — would apply
it last: a customer's stats would go back.

So every value of our tables carries a version (``"v"``, first in its JSON): one more than the
version of the value it replaces, which is what its writer read. The new owner starts from what
it recovered and counts on from there, so by the time the zombie's record arrives, the key's
value has a version at least as high. The tables' store
(:class:`pipeline.streaming.versioned_store.VersionedRocksDBStore`) applies a changelog record
only when its version is above the one stored (or already applied in the same batch): whatever
order the records arrive in, the store keeps the newest value. Equal versions keep the first:
the same update, or the zombie's. Deletions and values without a version are applied as
before.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, is_dataclass, replace
from functools import partial
from typing import Any, Protocol

import orjson
from faust.streams import current_event

from pipeline.domain import horizon
from pipeline.streaming import faust_patches
from pipeline.streaming.topics import egress

log = logging.getLogger(__name__)

VERSION = "v"


def stored(table: Any, key: bytes) -> bytes | None:
    """The bytes ``table``'s store holds for ``key``, in one store lookup (what the changelog
    has been sent; a value written since is staged, see :func:`read`).

    ``table.get(key)`` looks twice: Faust's table ``__getitem__`` asks the store whether it
    holds the key, then reads it, two RocksDB gets per read. Its store (``table.data``) answers
    in one, for the current event's partition inside an agent as the table does.
    """
    value: bytes | None = table.data.get(key)
    return value


class Value(Protocol):
    """A table value as the tables module holds it: a frozen dataclass with its version."""

    @property
    def version(self) -> int: ...

    def to_value(self) -> dict[str, Any]: ...


# -- write-behind ---------------------------------------------------------------------------------
#
# A value is written once per commit, not once per event. An agent's write stages the new
# value here, in memory, and its reads get it back from here, decoded; :func:`flush`, which
# runs before every offset commit (``faust_patches.before_commit``), encodes each value written
# since the last commit once, sends it to the changelog and writes it to the store. A hot key
# (a SKU every order names, a customer with thousands of orders) whose value holds the ids of
# its dedupe horizon was decoded, re-encoded, stored and sent whole for every event: tens of
# milliseconds an event at a few hundred kilobytes. Now that is paid once a commit interval.
#
# Nothing changes for a crash: no offset is committed before the values of the events it
# covers are sent (the flush runs first, and nothing runs between its end and Faust picking the
# offsets), so a worker that dies with values staged has their events redelivered, applied
# again on the values the changelog holds. Staged values of partitions revoked are dropped.
#
# Values stay here once flushed too, up to CACHED entries, so the next event for a hot key
# does not decode it again; only an agent's reads and writes (its own partitions) fill it.

CACHED = 4096
# A value whose estimated size passes this share of MAX_VALUE_BYTES is encoded at its write to
# check it exactly (ValueTooLarge must reach the event that made the value too large).
CHECK_SHARE = 0.8


@dataclass(slots=True)
class _Entry:
    table: Any
    key: bytes
    partition: int
    version: int
    value: Value | dict[str, Any] | None  # what to encode (None: deleted)
    raw: bytes | None = None  # its encoding, when made at the write
    size: int = 0  # bytes of the latest exact encoding of this key's value
    weight: int = 0  # the value's weight() then


_cache: OrderedDict[tuple[str, bytes], _Entry] = OrderedDict()
_dirty: dict[tuple[str, bytes], _Entry] = {}


def read(table: Any, key: bytes, decode: Callable[[bytes], Any]) -> Any:
    """``key``'s value in ``table``: the one staged or cached here (as it was written), or
    ``decode`` of the stored bytes (``None`` when there are none)."""
    entry = _cache.get((table.name, key))
    if entry is not None:
        _cache.move_to_end((table.name, key))
        return entry.value if not isinstance(entry.value, dict) else decode(_entry_raw(entry))
    raw = stored(table, key)
    if raw is None:
        return None
    value = decode(raw)
    event = current_event()
    if event is not None and hasattr(value, "to_value"):
        _remember(_Entry(table, key, event.message.partition, getattr(value, "version", 0),
                         value, raw, len(raw), _weight(value)))  # fmt: skip
    return value


async def write(
    table: Any, key: bytes, version: int, value: Value | dict[str, Any], *, at_once: bool = False
) -> None:
    """``table[key] = value`` at ``version``, staged until the next commit (see above).

    The changelog record goes straight to the app's producer at the flush, not through Faust's
    ``Table.__setitem__`` (``Topic.send_soon``: a future message, the producer buffer's queue and
    its task, the topic's publish path and two callbacks per record, in our profile more than the
    send itself); the same topic, key, value and partition (the event's), the same recovery mark
    once the broker acknowledges it (by
    :func:`pipeline.streaming.faust_patches.move_recovery_mark`'s rule, once per turn of the event
    loop for that turn's acknowledgements), and a stronger guarantee: no offset is committed once a
    record is refused (:func:`pipeline.streaming.faust_patches.track_delivery`); the worker stops
    with the offsets since its last commit uncommitted. A value over
    :data:`pipeline.domain.horizon.MAX_VALUE_BYTES` is refused here, before anything is staged
    (:class:`pipeline.domain.horizon.ValueTooLarge`, a permanent error: the event is dead-lettered
    saying why, rather than the broker refusing the record and the worker stopping on it).

    ``at_once`` sends and stores the value now, for a value that records an effect outside
    (an email sent) which a redelivery after a crash must find.
    """
    event = _current_event(table)
    slot = (table.name, key)
    value = replace(value, version=version) if is_dataclass(value) else value
    entry = _Entry(table, key, event.message.partition, version, value)
    weight = _weight(value)
    previous = _cache.get(slot)
    if previous is not None and previous.size and previous.weight and weight:
        estimate = previous.size * weight / previous.weight
        entry.size, entry.weight = previous.size, previous.weight
    else:
        estimate = float(horizon.MAX_VALUE_BYTES)  # unknown: encoded now
    if estimate > CHECK_SHARE * horizon.MAX_VALUE_BYTES:
        raw = encode(version, _plain(value))
        entry.raw = horizon.check_size(raw, f"{table.name} {key[:64]!r}")
        entry.size, entry.weight = len(entry.raw), weight
    _stage(slot, entry)
    if at_once:
        del _dirty[slot]
        await _flush_entry(entry)


async def delete(table: Any, key: bytes) -> None:
    """``del table[key]`` (``table.pop``), its tombstone staged as :func:`write` stages values.

    Through Faust's ``pop`` the tombstone went the buffer's way, acknowledged through more callbacks
    than the table's writes: an order's write at offset n and its deletion at n + 1, acknowledged in
    one batch, reached the recovery mark as n + 1 then n, and the mark stuck at n
    (:func:`pipeline.streaming.faust_patches.move_recovery_mark`). One path per table keeps them in
    order. The tombstone is sent even when the key is not stored: a repeat is harmless, and after a
    crash it is how a changelog that missed the first one gets it.
    """
    event = _current_event(table)
    _stage((table.name, key), _Entry(table, key, event.message.partition, 0, None))


async def resend(table: Any, key: bytes) -> None:
    """Send ``key``'s stored value to the changelog again, for an event already applied.

    A worker killed before the broker acknowledged its changelog records keeps their RocksDB writes,
    and the offsets of their events are not committed. Restarted on the same state, it finds each
    redelivered event already applied and writes nothing, so the changelog would lack that event's
    effect until the key is written again, and a standby or a worker rebuilding the table would miss
    it for good. An agent that finds an event already applied calls this: the record has the stored
    value's version, so a reader that has it already keeps its own
    (``VersionedRocksDBStore.apply_changelog_batch``), and one that missed it catches up. A value
    staged since its last flush goes out with the next one anyway.
    """
    event = _current_event(table)
    slot = (table.name, key)
    if slot in _dirty:
        return
    raw = stored(table, key)
    if raw is not None:
        await _send(table, event.message.partition, key, raw)


async def flush() -> None:
    """Send and store every value staged since the last flush (before each offset commit).

    Writes made while it awaits the producer are flushed too, before it returns, so the offset
    commit that follows (with no await in between) covers no event whose value is unsent."""
    while _dirty:
        entries = list(_dirty.values())
        _dirty.clear()
        for entry in entries:
            await _flush_entry(entry)
        _trim()


async def _flush_entry(entry: _Entry) -> None:
    raw = entry.raw
    if raw is None and entry.value is not None:
        raw = encode(entry.version, _plain(entry.value))
    try:
        await _send(entry.table, entry.partition, entry.key, raw)
    except Exception as exc:  # noqa: BLE001 -- refused at once (e.g. over max_request_size)
        faust_patches.refuse_commits(entry.table.changelog_topic.get_topic_name(), exc)
        return
    _store(entry.table, entry.partition, entry.key, raw)
    entry.raw = None  # the encoding is not kept: the next write makes its own
    if raw is not None:
        entry.size, entry.weight = len(raw), _weight(entry.value)


def forget(partitions: Iterable[int]) -> None:
    """Drop what is staged and cached for ``partitions`` (revoked: another worker owns them
    now, and the events behind anything still staged are not committed)."""
    gone = set(partitions)
    for slot in [slot for slot, entry in _cache.items() if entry.partition in gone]:
        del _cache[slot]
        _dirty.pop(slot, None)


def reset() -> None:
    """Drop everything staged and cached (a new app in the same process: the tests)."""
    _cache.clear()
    _dirty.clear()


def staged_keys(table: Any) -> list[bytes]:
    """The keys of ``table`` with a value written since the last flush (not in its store yet)."""
    return [key for name, key in _dirty if name == table.name]


def staged() -> int:
    """How many values wait for the next flush."""
    return len(_dirty)


def _stage(slot: tuple[str, bytes], entry: _Entry) -> None:
    _cache[slot] = entry
    _cache.move_to_end(slot)
    _dirty[slot] = entry


def _remember(entry: _Entry) -> None:
    _cache[(entry.table.name, entry.key)] = entry
    _trim()


def _trim() -> None:
    """Evict the least recently used values that are not waiting for a flush."""
    excess = len(_cache) - CACHED
    if excess <= 0:
        return
    victims = []
    for slot in _cache:  # oldest first; stops as soon as it has enough
        if slot not in _dirty:
            victims.append(slot)
            if len(victims) == excess:
                break
    for slot in victims:
        del _cache[slot]


def _plain(value: Value | dict[str, Any]) -> dict[str, Any]:
    return value if isinstance(value, dict) else value.to_value()


def _entry_raw(entry: _Entry) -> bytes:
    return entry.raw or encode(entry.version, _plain(entry.value or {}))


def _weight(value: Any) -> int:
    weight = getattr(value, "weight", None)
    return int(weight()) if callable(weight) else 0


def _store(table: Any, partition: int, key: bytes, raw: bytes | None) -> None:
    """Write the store for ``partition`` as Faust's RocksDB store does for an event of it
    (``Store._set``/``_del``), outside any event."""
    store = table.data
    if hasattr(store, "_db_for_partition"):
        db = store._db_for_partition(partition)
        if raw is None:
            db.delete(key)
            store._key_index.pop(key, None)
        else:
            store._key_index[key] = partition
            db.put(key, raw)
    elif raw is None:
        store.pop(key, None)
    else:
        store[key] = raw


def _current_event(table: Any) -> Any:
    event = current_event()
    if event is None:
        raise RuntimeError(f"{table.name}: tables are written inside an agent, for an event")
    return event


async def _send(table: Any, partition: int, key: bytes, raw: bytes | None) -> None:
    topic = table.changelog_topic.get_topic_name()
    delivery = await egress.submit(topic, raw, key=key, partition=partition)
    faust_patches.expect_delivery(delivery, topic)
    delivery.add_done_callback(partial(_on_changelog_sent, table))


# Changelog offsets acknowledged in this turn of the event loop, by table and partition: the
# recovery mark (a RocksDB read and write) moves once per turn, not once per record.
_acknowledged: dict[tuple[int, Any], tuple[Any, list[int]]] = {}


def _on_changelog_sent(table: Any, delivery: asyncio.Future[Any]) -> None:
    if not faust_patches.settle_delivery(delivery):
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
    faust_patches.move_recovery_mark(table, slot[1], offsets)


def encode(version: int, value: dict[str, Any]) -> bytes:
    """A table value's bytes: its version first, then the value's fields, as compact JSON.

    By orjson: the standard library's encoder took a fifth of the hot SKU's worker in the soak,
    re-encoding its 8,000-entry ledger at every commit (15 ms against orjson's 1.5). The same
    JSON but for non-ASCII text, which orjson writes as UTF-8 rather than ``\\u`` escapes.
    """
    return orjson.dumps({VERSION: version, **value})


def install() -> None:
    faust_patches.before_commit(flush)
    faust_patches.on_revoked(forget)
