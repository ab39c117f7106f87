"""The dead-letter index's SQL, SQLite and PostgreSQL alike: a row per dead-letter record
(indexing twice changes nothing) and a row per replay."""

from __future__ import annotations

import base64
import json
from datetime import datetime
from typing import Any

from sqlalchemy import func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from pipeline.adapters.db.errors import translated
from pipeline.adapters.db.schema import dead_letter_replays, dead_letters, operator_actions
from pipeline.domain.audit import DEAD_LETTER_DISCARD, Audit
from pipeline.domain.dead_letters import DISCARDED, REPLAYED, DeadLetter, Filter


@translated
class DeadLetterStore:
    """The index's SQL (SQLite and PostgreSQL alike)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def add(self, letter: DeadLetter) -> bool:
        """Index ``letter``; False when it was indexed already."""
        values = {name: getattr(letter, name) for name in dead_letters.c.keys()}  # noqa: SIM118
        values["headers"] = json.dumps(
            [[k, base64.b64encode(v).decode()] for k, v in letter.headers]
        )
        try:
            async with self.engine.begin() as conn:
                await conn.execute(insert(dead_letters).values(**values))
        except IntegrityError:
            return False
        return True

    async def find(self, where: Filter) -> list[DeadLetter]:
        c = dead_letters.c
        query = select(dead_letters).order_by(c.dead_lettered_at, c.id).limit(where.limit)
        conditions = [
            (where.agent, c.agent),
            (where.error_type, c.error_type),
            (where.reason, c.reason),
            (where.status, c.status),
            (where.event_id, c.event_id),
        ]
        for value, column in conditions:
            if value is not None:
                query = query.where(column == value)
        if where.since is not None:
            query = query.where(c.dead_lettered_at >= where.since)
        if where.until is not None:
            query = query.where(c.dead_lettered_at < where.until)
        if where.ids:
            query = query.where(c.id.in_(where.ids))
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [_letter(r._mapping) for r in rows]

    async def counts(self) -> list[tuple[str, str, int]]:
        """How many dead letters there are, as ``(reason, status, count)`` rows."""
        c = dead_letters.c
        query = select(c.reason, c.status, func.count()).group_by(c.reason, c.status)
        async with self.engine.connect() as conn:
            return [(r, s, int(n)) for r, s, n in (await conn.execute(query)).all()]

    async def replay_count(self, agent: str, event_key: str) -> int:
        r = dead_letter_replays.c
        query = select(func.count()).where(r.agent == agent, r.event_key == event_key)
        async with self.engine.connect() as conn:
            return int((await conn.execute(query)).scalar_one())

    async def claim_replay(self, letter: DeadLetter) -> bool:
        c = dead_letters.c
        async with self.engine.begin() as conn:
            claimed = await conn.execute(
                update(dead_letters)
                .where(c.id == letter.id, c.status != DISCARDED)
                .values(status=REPLAYED)
            )
        return bool(claimed.rowcount)

    async def release_replay(self, letter: DeadLetter) -> None:
        c = dead_letters.c
        async with self.engine.begin() as conn:
            await conn.execute(
                update(dead_letters)
                .where(c.id == letter.id, c.status == REPLAYED)
                .values(status=letter.status)
            )

    async def record_replay(self, letter: DeadLetter, at: datetime, requested_by: str) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                insert(dead_letter_replays).values(
                    dead_letter_id=letter.id, agent=letter.agent, event_key=letter.event_key,
                    replayed_at=at, requested_by=requested_by,
                )
            )  # fmt: skip

    async def discard(self, letters: list[DeadLetter], audit: Audit) -> list[str]:
        """Mark ``letters`` discarded, each with its record, in one transaction; the ids of
        those it discarded (one discarded meanwhile is left as it is)."""
        c = dead_letters.c
        done: list[str] = []
        async with self.engine.begin() as conn:
            for letter in letters:
                changed = await conn.execute(
                    update(dead_letters)
                    .where(c.id == letter.id, c.status != DISCARDED)
                    .values(status=DISCARDED)
                )
                if not changed.rowcount:
                    continue
                detail = {
                    "agent": letter.agent,
                    "event_id": letter.event_id,
                    "event_type": letter.event_type,
                    "dead_letter_reason": letter.reason,
                    "error_type": letter.error_type,
                    "status_before": letter.status,
                }
                await conn.execute(
                    insert(operator_actions).values(
                        at=audit.at, actor=audit.by, action=DEAD_LETTER_DISCARD,
                        subject=letter.id, reason=audit.reason, detail=json.dumps(detail),
                    )
                )  # fmt: skip
                done.append(letter.id)
        return done

    async def replays(self, dead_letter_id: str) -> list[dict[str, Any]]:
        r = dead_letter_replays.c
        query = select(r.replayed_at, r.requested_by).where(r.dead_letter_id == dead_letter_id)
        async with self.engine.connect() as conn:
            return [dict(row._mapping) for row in (await conn.execute(query.order_by(r.id)))]


def _letter(row: Any) -> DeadLetter:
    values = dict(row)
    values["headers"] = [(k, base64.b64decode(v)) for k, v in json.loads(values["headers"])]
    return DeadLetter(**values)
