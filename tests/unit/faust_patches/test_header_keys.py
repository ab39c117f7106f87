"""A record whose header key is not UTF-8 (:mod:`pipeline.streaming.faust_patches.header_keys`),
read by aiokafka's own fetcher code from the bytes a broker sends."""

from __future__ import annotations

import struct
from typing import Any

import aiokafka.consumer.fetcher as aiokafka_fetcher
import pytest
from aiokafka.record.default_records import _DefaultRecordBatchBuilderPy
from aiokafka.structs import TopicPartition

from pipeline.streaming.faust_patches.header_keys import (
    STOCK_MEMORY_RECORDS,
    STOCK_UNPACK_RECORDS,
    KeptRecords,
    _unpack_records,
)

BAD_KEY = b"\xff\xfe"
PLACEHOLDER = "\x01\x02"  # as long as BAD_KEY, replaced by it in the batch's bytes
GZIP = 1


def _batch(base_offset: int, keys: list[str], compression: int = 0) -> bytes:
    """A record batch as a broker sends it: a record per header key in ``keys``, with the
    value ``v<offset>``; :data:`PLACEHOLDER` becomes :data:`BAD_KEY` (aiokafka's builders
    refuse to write it, a broker stores it)."""
    builder = _DefaultRecordBatchBuilderPy(
        magic=2, compression_type=compression, is_transactional=0, producer_id=-1,
        producer_epoch=-1, base_sequence=-1, batch_size=1 << 20,
    )  # fmt: skip
    for delta, key in enumerate(keys):
        builder.append(delta, timestamp=1_700_000_000_000, key=b"k",
                       value=f"v{base_offset + delta}".encode(),
                       headers=[(key, b"h"), ("event_id", b"e")])  # fmt: skip
    # The records are kept uncompressed until build(), which compresses and seals the CRC.
    records = builder._buffer
    while (at := records.find(PLACEHOLDER.encode())) >= 0:
        records[at : at + len(BAD_KEY)] = BAD_KEY
    raw = bytearray(builder.build())
    struct.pack_into(">q", raw, 0, base_offset)  # outside the CRC, set by the broker
    return bytes(raw)


def _fetched(compression: int = 0) -> bytes:
    """Three batches of one fetch: offsets 0-1, 2-4 (3 with a bad key), 5."""
    return (
        _batch(0, ["a", "b"]) + _batch(2, ["c", PLACEHOLDER, "d"], compression) + _batch(5, ["e"])
    )


def _partition_records(records: Any, fetch_offset: int = 0) -> Any:
    return aiokafka_fetcher.PartitionRecords(
        TopicPartition("orders.events", 0), records, [], fetch_offset, None, None, True,
        aiokafka_fetcher.READ_UNCOMMITTED,
    )  # fmt: skip


def test_aiokafkas_fetcher_stops_at_a_header_key_that_is_not_utf8() -> None:
    """Pins the bug: the records before it come out, then the error escapes, and the partition
    can never be read past it."""
    partition = _partition_records(STOCK_MEMORY_RECORDS(_fetched()))
    unpacking = STOCK_UNPACK_RECORDS(partition)
    assert [next(unpacking).offset for _ in range(3)] == [0, 1, 2]
    with pytest.raises(UnicodeDecodeError):
        next(unpacking)
    assert partition.next_fetch_offset == 3


@pytest.mark.parametrize("compression", [0, GZIP], ids=["plain", "gzip"])
def test_such_a_record_is_read_whole_with_its_key_escaped_and_the_rest_follow(
    compression: int,
) -> None:
    partition = _partition_records(KeptRecords(_fetched(compression)))
    records = list(_unpack_records(partition))
    assert [r.offset for r in records] == [0, 1, 2, 3, 4, 5]
    assert [r.value for r in records] == [f"v{n}".encode() for n in range(6)]
    [(key, value), event_id] = records[3].headers
    assert key.encode("utf-8", "surrogateescape") == BAD_KEY and value == b"h"
    assert event_id == ("event_id", b"e")
    assert all(r.headers[0][0].isascii() for n, r in enumerate(records) if n != 3)
    assert partition.next_fetch_offset == 6


def test_a_fetch_from_past_such_a_record_hands_over_only_what_follows_it() -> None:
    """A fetch from offset 4 gets the batches from the one holding 4 (which holds the bad
    record too: aiokafka still reads it, to skip it)."""
    fetched = _batch(2, ["c", PLACEHOLDER, "d"]) + _batch(5, ["e"])
    with pytest.raises(UnicodeDecodeError):
        list(STOCK_UNPACK_RECORDS(_partition_records(STOCK_MEMORY_RECORDS(fetched), 4)))
    partition = _partition_records(KeptRecords(fetched), fetch_offset=4)
    assert [r.offset for r in _unpack_records(partition)] == [4, 5]


def test_the_fix_is_what_aiokafkas_fetcher_runs() -> None:
    from pipeline.streaming import faust_patches

    faust_patches.install()
    assert aiokafka_fetcher.MemoryRecords is KeptRecords
    assert aiokafka_fetcher.PartitionRecords._unpack_records is _unpack_records
