"""A record whose header key is not UTF-8 stops its partition for good (aiokafka 0.14.0,
``PartitionRecords._unpack_records`` through the record batch readers, the C one and the
Python one). Kafka's protocol calls a header key a string, but the broker stores whatever bytes
a producer sends, and aiokafka decodes every key strictly while it unpacks a fetched batch: the
``UnicodeDecodeError`` (a ``CorruptRecordException`` from the Python reader) escapes from
``getmany``, Faust's consumer crashes and the worker stops; the next owner of the partition
fetches the same record and stops too. Anybody who can write to a source topic could stop every
worker with one record, which no dead-letter path ever sees.

The fix keeps each fetched partition's bytes beside aiokafka's reader (:class:`KeptRecords`,
one object per fetch response and partition, nothing per record) and, only when unpacking fails
on a header key, reads the rest of those bytes again with aiokafka's Python reader, decoding
header keys with ``surrogateescape``: the record comes out whole, its undecodable key as a
string with surrogate escapes (the bytes themselves: ``key.encode("utf-8", "surrogateescape")``).
The consume loop dead-letters such a record as poison
(:func:`pipeline.domain.failures.check_header_keys`); the dead letter carries the key escaped
(``\\xff``), since Kafka would not take it back. The batches before, and the records after it,
are read as usual.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import Any

import aiokafka.consumer.fetcher as aiokafka_fetcher
from aiokafka.errors import CorruptRecordException
from aiokafka.record.default_records import _DefaultRecordBatchPy
from aiokafka.record.legacy_records import LegacyRecordBatch

STOCK_MEMORY_RECORDS = aiokafka_fetcher.MemoryRecords
STOCK_UNPACK_RECORDS = aiokafka_fetcher.PartitionRecords._unpack_records


class KeptRecords:
    """aiokafka's reader of one fetched partition's record batches, keeping the bytes for a
    second reading (:func:`_unpack_records`)."""

    __slots__ = ("_records", "data")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self._records = STOCK_MEMORY_RECORDS(data)

    def size_in_bytes(self) -> int:
        return self._records.size_in_bytes()

    def has_next(self) -> bool:
        return self._records.has_next()

    def next_batch(self) -> Any:
        return self._records.next_batch()


class _EscapingBytes(bytes):
    """A slice of a batch read leniently: decoded, undecodable bytes become surrogate escapes."""

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        return super().decode(encoding, "surrogateescape")


class _EscapingBuffer(bytearray):
    """A batch's bytes whose slices are :class:`_EscapingBytes`: aiokafka's Python reader
    decodes each header key as ``buffer[start:end].decode("utf-8")``."""

    def __getitem__(self, index: Any) -> Any:
        item = super().__getitem__(index)
        return _EscapingBytes(item) if isinstance(index, slice) else item


class _LenientBatch(_DefaultRecordBatchPy):
    """aiokafka's Python reader of a (magic 2) record batch, decoding header keys leniently
    (the one change, for this fallback only; aiokafka marks the class final)."""

    _buffer: bytearray

    def __iter__(self) -> _LenientBatch:
        super().__iter__()  # decompresses into a new buffer
        self._buffer = _EscapingBuffer(self._buffer)
        return self


class _LenientRecords:
    """The record batches of ``data`` from the first one not wholly before ``offset``, read by
    aiokafka's Python reader with header keys decoded leniently (laid out as aiokafka's
    ``MemoryRecords`` reads them: base offset, length, then the batch; an incomplete last batch
    is left, as there)."""

    def __init__(self, data: bytes, offset: int) -> None:
        self._data = memoryview(data)
        self._pos = 0
        self._next = self._read()
        while self._next is not None and self._next.next_offset <= offset:
            self._next = self._read()

    def _read(self) -> Any:
        data, pos = self._data, self._pos
        if len(data) - pos < _LOG_OVERHEAD:
            return None
        (length,) = struct.unpack_from(">i", data, pos + _LENGTH_OFFSET)
        end = pos + _LOG_OVERHEAD + length
        if end > len(data):
            return None
        self._pos = end
        batch, magic = data[pos:end], data[pos + _MAGIC_OFFSET]
        return _LenientBatch(batch) if magic >= 2 else LegacyRecordBatch(batch, magic)

    def has_next(self) -> bool:
        return self._next is not None

    def next_batch(self) -> Any:
        batch, self._next = self._next, self._read()
        return batch


_LENGTH_OFFSET = struct.calcsize(">q")
_LOG_OVERHEAD = struct.calcsize(">qi")
_MAGIC_OFFSET = struct.calcsize(">qii")


def is_header_key_error(exc: BaseException) -> bool:
    """Whether unpacking failed on text that is not UTF-8: only header keys are decoded."""
    if isinstance(exc, CorruptRecordException):
        exc = exc.__cause__ or exc
    return isinstance(exc, UnicodeDecodeError)


def _unpack_records(self: Any) -> Iterator[Any]:
    """aiokafka's unpacking of a fetched partition; on a header key that is not UTF-8, the
    rest of the fetched bytes again, leniently, from the record it stopped at (records before
    ``next_fetch_offset`` were handed over already and are skipped by aiokafka's own check)."""
    try:
        yield from STOCK_UNPACK_RECORDS(self)
    except (UnicodeDecodeError, CorruptRecordException) as exc:
        if not (is_header_key_error(exc) and isinstance(self._records, KeptRecords)):
            raise
        self._records = _LenientRecords(self._records.data, self.next_fetch_offset)
        yield from STOCK_UNPACK_RECORDS(self)


def install() -> None:
    aiokafka_fetcher.MemoryRecords = KeptRecords
    aiokafka_fetcher.PartitionRecords._unpack_records = _unpack_records
