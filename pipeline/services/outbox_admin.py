"""Parked outbox rows, for the operator: list them, put them back, or throw them away.

A row is parked when Kafka refused it for good (too large, an unauthorized topic): the
forwarder moved on to the rows behind it. Once the cause is fixed (the topic's or producer's
size limit raised, the ACL granted) ``requeue`` puts the row back to ``pending`` and the
forwarder publishes it once, like any row; if it is worthless, ``discard`` marks it
``discarded`` and it is never published. Both leave a record (who, when, why) in
``operator_actions``, in the transaction that changes the row.

Per-key order: a parked row's later events of the same key (the customer) have usually gone
out already, so sending it now delivers it after them. A requeue refuses such a row unless
asked ``out_of_order``; see :meth:`pipeline.adapters.db.outbox_admin.OutboxAdmin.requeue`.
"""

from __future__ import annotations

from datetime import timedelta

from pipeline.domain.audit import Audit
from pipeline.domain.events import utc_now
from pipeline.domain.outbox import Discard, ParkedRow, Requeue, Settled
from pipeline.domain.paging import MAX_PAGE
from pipeline.services.ports import OutboxAdminRepository

# Slack on the retention: a later row's publication time is not exactly after its creation.
RETENTION_SLACK = timedelta(minutes=5)


class OutboxOperations:
    def __init__(self, store: OutboxAdminRepository, *, retention: timedelta) -> None:
        self.store = store
        self.retention = retention

    async def parked(self, after: int | None, limit: int) -> tuple[list[ParkedRow], int | None]:
        """A page of parked rows by id, and the cursor of the next page (None: the last)."""
        rows = await self.store.parked_page(after, limit + 1)
        more = len(rows) > limit
        rows = rows[:limit]
        return rows, (rows[-1].id if more else None)

    async def requeue(self, request: Requeue) -> Settled:
        """The rows named, or every parked row a page at a time when ``request.everything``."""
        audit = Audit(request.by, request.reason, utc_now())
        verifiable_since = audit.at - self.retention + RETENTION_SLACK
        if not request.everything:
            return await self.store.requeue(list(request.ids), audit,
                                            out_of_order=request.out_of_order,
                                            verifiable_since=verifiable_since)  # fmt: skip
        result, after = Settled(), None
        while True:
            page = await self.store.parked_page(after, MAX_PAGE)
            if not page:
                return result
            done = await self.store.requeue([r.id for r in page], audit,
                                            out_of_order=request.out_of_order,
                                            verifiable_since=verifiable_since)  # fmt: skip
            result.done += done.done
            result.refused += done.refused
            after = page[-1].id

    async def discard(self, request: Discard) -> Settled:
        return await self.store.discard(
            list(request.ids), Audit(request.by, request.reason, utc_now())
        )
