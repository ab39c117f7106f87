"""The tables' store: Faust's RocksDB store that keeps the newest version of each key.

Registered with Faust as the ``versioned-rocksdb://`` store (the ``faust.stores`` entry point
in ``pyproject.toml``); ``PIPELINE_STORE=rocksdb://`` means this one (:func:`store_url`). Why
values carry versions: :mod:`pipeline.streaming.versions`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from importlib.metadata import entry_points
from typing import Any

import faust.stores.rocksdb as faust_rocksdb

log = logging.getLogger(__name__)

SCHEME = "versioned-rocksdb"
_PREFIX = b'{"v":'


def store_url(configured: str) -> str:
    """The store URL Faust is given for ``PIPELINE_STORE``: ``rocksdb://`` becomes this
    store's; others (``memory://`` in unit tests) stay as they are."""
    scheme, sep, rest = configured.partition("://")
    if scheme != "rocksdb":
        return configured
    if not any(ep.name == SCHEME for ep in entry_points(group="faust.stores")):
        raise RuntimeError(
            f"the {SCHEME}:// table store is not registered: the package's metadata is "
            "missing or stale; reinstall it (`pip install -e .` or `make install`)"
        )
    return f"{SCHEME}{sep}{rest}"


def version_of(raw: bytes | None) -> int | None:
    """The version at the start of a stored value, without decoding the rest of it."""
    if not raw or not raw.startswith(_PREFIX):
        return None
    end = raw.find(b",", len(_PREFIX))
    try:
        return int(raw[len(_PREFIX) : end if end > 0 else len(raw) - 1])
    except ValueError:
        return None


class VersionedRocksDBStore(faust_rocksdb.Store):
    """Faust's RocksDB store, but a changelog record older than the stored value is not
    applied (it is still counted as read, so recovery resumes after it)."""

    def apply_changelog_batch(
        self,
        batch: Iterable[Any],
        to_key: Callable[[Any], Any],
        to_value: Callable[[Any], Any],
    ) -> None:
        """One RocksDB write batch per partition: the records kept, and the offset read up to.

        The stored versions of the batch's keys are read in one multi-get per partition (the
        values as they were before the batch; a key met again in the batch is checked against
        the version kept for it here). The offset goes into the same write batch, so the data
        and the mark recovery resumes from are written together."""
        by_partition: dict[int, list[Any]] = {}
        for event in batch:
            msg = event.message
            by_partition.setdefault(msg.partition, []).append(msg)
        for partition, messages in by_partition.items():
            db = self._db_for_partition(partition)
            stored = db.get([msg.key for msg in messages])
            write = faust_rocksdb.rocksdict.WriteBatch(raw_mode=True)
            newest: dict[bytes, int | None] = {}
            read_up_to = -1
            for msg, raw in zip(messages, stored, strict=True):
                read_up_to = max(read_up_to, msg.offset)
                key, value = msg.key, msg.value
                if value is None:
                    write.delete(key)
                    newest[key] = None
                    continue
                incoming = version_of(value)
                if incoming is not None:
                    current = newest[key] if key in newest else version_of(raw)
                    if current is not None and incoming <= current:
                        log.warning(
                            "%s: changelog %s[%d]@%d has version %d of a key already at %d (a "
                            "late write of a worker that lost the partition): not applied",
                            self.table.name, msg.topic, partition, msg.offset, incoming, current,
                        )  # fmt: skip
                        continue
                write.put(key, value)
                newest[key] = incoming
            write.put(self.offset_key, str(read_up_to).encode())
            db.write(write)
