"""The inventory table (see :mod:`pipeline.domain.stock` for its value and rules)."""

from __future__ import annotations

import logging
from typing import Any

from pipeline.app import app, settings
from pipeline.domain.events import (
    InvalidEvent,
    LineReleaseRequested,
    LineReservationRequested,
    decode,
)
from pipeline.domain.horizon import ValueTooLarge
from pipeline.domain.stock import Stock, set_aside
from pipeline.streaming import delivery, versions
from pipeline.streaming.versioned_table import VersionedTable

log = logging.getLogger(__name__)


# Keys are raw SKU bytes, as on inventory.commands (see tables.customer_stats on routing).
stock_table = app.Table(
    "stock",
    key_type=bytes,
    # Values are our own JSON bytes: Faust's json codec cost more than the encoding itself.
    value_type=bytes,
    partitions=settings.partitions,
    help="Available and reserved units per SKU, with the ledger of order lines seen.",
)


stock: VersionedTable[Stock] = VersionedTable(
    stock_table, lambda _key, fields: Stock.from_value(fields), lambda value: value.sku
)


def local_skus(after: str | None, limit: int) -> list[dict[str, Any]]:
    """The SKUs of the stock partitions this worker owns (not its standbys), with their stock,
    in byte order of the SKU, the first ``limit`` after ``after``.

    The store holds each partition in its own RocksDB database, so this reads every key this
    worker owns and sorts them (values only for those it answers): its cost per page grows
    with the SKUs the worker owns. For a catalogue too large for that, a seek per partition
    database would be the next step."""
    start = None if after is None else after.encode()
    keys = {*stock_table.keys(), *versions.staged_keys(stock_table)}
    wanted = (k for k in keys if start is None or k > start)
    found: list[dict[str, Any]] = []
    for key in sorted(wanted):
        if len(found) == limit:
            break
        try:
            sku = key.decode()
        except UnicodeDecodeError:  # not set through the API (which takes text): not listable
            continue
        value = stock.get(sku)
        if value is not None:
            found.append(value.public())
    return found


async def note_dead_letter(message: Any) -> None:
    """The stock keeper dead-lettered ``message``: the SKU notes the command as pending, so a replay
    applies it once, however late (:mod:`pipeline.domain.horizon`). Stock sets and settlements need
    nothing: they are ordered and idempotent by themselves."""
    command_id = delivery.event_id(message)
    if not message.key or command_id is None:
        return
    line = None
    try:
        command = decode(message.value, LineReservationRequested, LineReleaseRequested)
        if isinstance(command, LineReservationRequested | LineReleaseRequested):
            line = (command.order_id, command.line_no)
    except InvalidEvent:
        pass  # a poison pill, or a stock set or settlement
    sku = bytes(message.key).decode(errors="replace")
    current = stock.get(sku) or Stock(sku)
    noted = set_aside(current, command_id, delivery.horizon(message).now, line)
    if noted is not current:
        try:
            await stock.save(current, noted)
        except ValueTooLarge as exc:  # the dead letter is out; its replay will change nothing
            log.error("not noting %s as pending: %s", command_id, exc)
