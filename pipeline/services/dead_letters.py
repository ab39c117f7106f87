"""Dead letters: the index of the dead-letter topic, listing with filters, and replay.

A dead-letter record (see :mod:`pipeline.domain.failures`) keeps the failed record's key, value and
headers and adds its failure context in ``x-`` headers. The dead-letter agent indexes each one
here (a row per record, so indexing twice changes nothing); ``GET /dead-letters`` and
``python -m pipeline dlt list`` read the index, on any worker.

Replay sends the original record back to the agent that failed it, alone (its redelivery
topic, the partition it first came from), so the replay has exactly the effect a first
delivery would have had: one, because every agent is idempotent. The send takes the original
Kafka timestamp from the replay's ``x-original-timestamp`` header
(:func:`pipeline.domain.failures.original_timestamp_ms`), so every replay lands in the window by
record time of the first delivery. Each replay is recorded; the loop guard refuses an event
that has been replayed ``PIPELINE_REPLAY_LIMIT`` times already.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from pipeline.domain import failures
from pipeline.domain.audit import Audit
from pipeline.domain.dead_letters import DISCARDED, OPEN, DeadLetter, Filter, replay_headers
from pipeline.services.ports import DeadLetterRepository

Send = Callable[[str, bytes | None, bytes | None, failures.Headers, int], Awaitable[None]]


@dataclass(slots=True)
class ReplayResult:
    replayed: list[str] = field(default_factory=list)
    refused: list[dict[str, str]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"replayed": self.replayed, "refused": self.refused}


@dataclass(slots=True)
class DiscardResult:
    discarded: list[str] = field(default_factory=list)
    refused: list[dict[str, str]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"discarded": self.discarded, "refused": self.refused}


class DeadLetters:
    """Listing and replay, for the HTTP views and the CLI alike. ``send(topic, key, value,
    headers, partition)`` must return only once the broker has the record."""

    def __init__(
        self, store: DeadLetterRepository, send: Send, *, replay_limit: int,
        redelivery_topic: Callable[[str], str], known_agents: Callable[[], Sequence[str]],
        max_age_seconds: float | None = None,
        replay_partition: Callable[[str, bytes | None, int], int] | None = None,
    ) -> None:  # fmt: skip
        self.max_age_seconds = max_age_seconds
        self.store = store
        self.send = send
        self.replay_limit = replay_limit
        self.redelivery_topic = redelivery_topic
        self.known_agents = known_agents
        # (agent, key, partition it first came from) -> the redelivery partition to send to:
        # another than the first after ``topics migrate`` changed the partition count.
        self.replay_partition = replay_partition or (lambda _agent, _key, first: first)

    async def list(self, where: Filter) -> list[DeadLetter]:
        return await self.store.find(where)

    async def replay(self, where: Filter, requested_by: str) -> ReplayResult:
        """Replay the open dead letters ``where`` selects (and, when ids are named, those
        even if replayed before: the loop guard still applies)."""
        if not where.ids and where.status is None:
            where = replace(where, status=OPEN)
        result = ReplayResult()
        for letter in await self.store.find(where):
            if letter.status == DISCARDED:
                result.refused.append({"id": letter.id, "reason": "discarded: never replayed"})
                continue
            if letter.agent not in self.known_agents():
                result.refused.append(
                    {"id": letter.id, "reason": f"unknown agent {letter.agent!r}"}
                )
                continue
            too_old = self._too_old(letter)
            if too_old is not None:
                result.refused.append({"id": letter.id, "reason": too_old})
                continue
            done = await self.store.replay_count(letter.agent, letter.event_key)
            if done >= self.replay_limit:
                result.refused.append({
                    "id": letter.id,
                    "reason": f"replay limit reached: {letter.event_key} was replayed {done} "
                              f"times (PIPELINE_REPLAY_LIMIT={self.replay_limit})",
                })  # fmt: skip
                continue
            # Marked replayed before it is sent: a discard that came in since it was found
            # wins, and one that comes after finds it replayed (never "discarded" yet sent).
            if not await self.store.claim_replay(letter):
                result.refused.append({"id": letter.id, "reason": "discarded: never replayed"})
                continue
            partition = self.replay_partition(letter.agent, letter.record_key,
                                              letter.original_partition)  # fmt: skip
            # Sent, and retried if it fails again, in the partition its key's state is in now.
            sent = replace(letter, original_partition=partition)
            try:
                await self.send(
                    self.redelivery_topic(letter.agent), letter.record_key, letter.record_value,
                    replay_headers(sent, done + 1), partition,
                )  # fmt: skip
            except BaseException:
                await self.store.release_replay(letter)
                raise
            await self.store.record_replay(letter, datetime.now(UTC), requested_by)
            result.replayed.append(letter.id)
        return result

    async def discard(self, where: Filter, audit: Audit) -> DiscardResult:
        return await discard(self.store, where, audit)

    def _too_old(self, letter: DeadLetter) -> str | None:
        """Why ``letter`` is past the replay horizon, or None. Its key noted it as pending for
        ``PIPELINE_REPLAY_MAX_AGE_SECONDS`` of record time from the original record's time; past
        that, the agent could not tell a first application from a repeat
        (pipeline.domain.horizon)."""
        if self.max_age_seconds is None:
            return None
        born = letter.original_timestamp
        if born is None:
            born = letter.first_failure_at.timestamp()
        age = time.time() - born
        if age <= self.max_age_seconds:
            return None
        return (
            f"too old to replay: its record is {age / 86400:.1f} days old, past "
            f"PIPELINE_REPLAY_MAX_AGE_SECONDS={self.max_age_seconds:g}, beyond which the agent "
            "no longer remembers whether it applied the event; check the event's effect by hand "
            "(GET the order, the customer's stats, the SKU) and send a correcting order or "
            "stock set if it is missing"
        )


async def discard(store: DeadLetterRepository, where: Filter, audit: Audit) -> DiscardResult:
    """Discard the open dead letters ``where`` selects (by id, replayed ones too): they are
    no longer replayed nor counted open, and each discard is recorded with who and why."""
    if not where.ids and where.status is None:
        where = replace(where, status=OPEN)
    result = DiscardResult()
    chosen = []
    for letter in await store.find(where):
        if letter.status == DISCARDED:
            result.refused.append({"id": letter.id, "reason": "discarded already"})
        else:
            chosen.append(letter)
    result.discarded = await store.discard(chosen, audit)
    gone = set(result.discarded)
    result.refused += [{"id": d.id, "reason": "discarded meanwhile"} for d in chosen
                       if d.id not in gone]  # fmt: skip
    return result
