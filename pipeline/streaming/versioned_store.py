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
        super().apply_changelog_batch(kept, to_key, to_value)
        read_up_to: dict[Any, int] = {}
        for event in events:
            tp, offset = event.message.tp, event.message.offset
            read_up_to[tp] = max(offset, read_up_to.get(tp, offset))
        for tp, offset in read_up_to.items():
            self.set_persisted_offset(tp, offset)
