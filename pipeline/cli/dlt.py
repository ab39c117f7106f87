"""``python -m pipeline dlt list|replay|discard``: the dead letters from a shell, like the HTTP
views.

Reads the same index (the database) and replays through the same code; sends with its own
idempotent producer, so no worker needs to be reachable, only Kafka and the database (only the
database for ``list`` and ``discard``).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import sys
from typing import Any

from pipeline.domain.dead_letters import FILTER_FIELDS
from pipeline.settings import Settings


def add_parser(sub: Any) -> None:
    dlt = sub.add_parser("dlt", help="list, replay and discard dead letters")
    actions = dlt.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="list dead letters, oldest first")
    replay = actions.add_parser(
        "replay", help="send dead letters back through the agent that failed them",
        description="Select by --id, --event-id, a filter, or --all. Exits 1 if any selected "
                    "dead letter was refused (e.g. the replay limit was reached).",
    )  # fmt: skip
    discard = actions.add_parser(
        "discard", help="discard dead letters judged worthless: never replayed, not counted open",
        description="Select as replay does (--id, --event-id, a filter, or --all; without "
                    "--id only open ones). Each discard is recorded with --by and --why. "
                    "Exits 1 if any selected dead letter was discarded already.",
    )  # fmt: skip
    for p in (listing, replay, discard):
        p.add_argument("--agent", help="only this agent's dead letters")
        p.add_argument("--error-type", help="exception type, e.g. builtins TimeoutError")
        p.add_argument("--reason", choices=["poison", "permanent", "retries-exhausted"])
        p.add_argument("--event-id", help="only dead letters of this event")
        p.add_argument("--since", help="dead-lettered at or after this ISO 8601 time (UTC)")
        p.add_argument("--until", help="dead-lettered before this ISO 8601 time (UTC)")
        p.add_argument("--limit", help="at most this many (1-1000)")
    listing.add_argument("--status", choices=["open", "replayed", "discarded"])
    listing.add_argument("--json", action="store_true", help="full records as JSON")
    for p in (replay, discard):
        p.add_argument("--id", action="append", dest="ids", help="a dead-letter id (repeatable)")
        p.add_argument("--all", action="store_true", help="every open dead letter")
    discard.add_argument("--why", required=True, help="why they are thrown away (recorded)")
    discard.add_argument("--by", help="who asks (default: cli:USER@HOST)")


def run(settings: Settings, args: argparse.Namespace) -> int:
    from pipeline.cli.database import operator
    from pipeline.domain.dead_letters import (
        BadFilter,
        parse_discard_request,
        parse_filter,
        parse_replay_request,
    )

    raw = {name: getattr(args, name, None) for name in FILTER_FIELDS}
    try:
        if args.action == "list":
            where = parse_filter(raw)
        else:
            body: dict[str, Any] = {k: v for k, v in raw.items() if v is not None}
            if args.ids:
                body["ids"] = args.ids
            if args.all:
                body["all"] = True
            if args.action == "discard":
                body |= {"why": args.why, "by": args.by or operator()}
                where, by, why = parse_discard_request(body, by=operator())
                return _discard(settings, where, by, why)
            where = parse_replay_request(body)
    except BadFilter as exc:
        for problem in exc.problems:
            field = problem["field"].replace("_", "-")
            message = problem["message"].replace('"', "")
            print(f"error: --{field}: {message}", file=sys.stderr)
        return 2
    return asyncio.run(_list(settings, where, args.json) if args.action == "list"
                       else _replay(settings, where))  # fmt: skip


def _discard(settings: Settings, where: Any, by: str, why: str) -> int:
    from pipeline.adapters.db.dead_letters import DeadLetterStore
    from pipeline.cli.database import with_database
    from pipeline.cli.errors import CommandError
    from pipeline.domain.audit import Audit
    from pipeline.domain.events import utc_now
    from pipeline.services.dead_letters import discard

    async def act(engine: Any) -> Any:
        return await discard(DeadLetterStore(engine), where, Audit(by, why, utc_now()))

    try:
        result = with_database(settings, act)
    except CommandError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not result.discarded and not result.refused:
        print("nothing to discard: no open dead letters match")
        return 0
    print(f"discarded {len(result.discarded)}: {' '.join(result.discarded) or '-'}")
    for refusal in result.refused:
        print(f"refused {refusal['id']}: {refusal['reason']}")
    return 1 if result.refused else 0


async def _list(settings: Settings, where: Any, as_json: bool) -> int:
    from pipeline.adapters.db.dead_letters import DeadLetterStore
    from pipeline.adapters.db.schema import make_engine

    engine = make_engine(settings.database_url)
    try:
        letters = await DeadLetterStore(engine).find(where)
    finally:
        await engine.dispose()
    if as_json:
        print(json.dumps([d.to_json(full=True) for d in letters], indent=2))
        return 0
    if not letters:
        print("no dead letters match")
        return 0
    rows = [("ID", "AGENT", "REASON", "ERROR", "EVENT", "DEAD-LETTERED", "STATUS", "REPLAYS")]
    rows += [(d.id, d.agent, d.reason, d.error_type or "-", d.event_id or "-",
              d.dead_lettered_at.strftime("%Y-%m-%d %H:%M:%S"), d.status, str(d.replays))
             for d in letters]  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0


async def _replay(settings: Settings, where: Any) -> int:
    from aiokafka import AIOKafkaProducer

    from pipeline.adapters.db.dead_letters import DeadLetterStore
    from pipeline.adapters.db.schema import make_engine
    from pipeline.domain import failures
    from pipeline.services.dead_letters import DeadLetters
    from pipeline.streaming.topics import AGENT_SOURCES, redelivery_topic_name, replay_partition

    for module in settings.extra_modules:  # their agents can be replayed to as well
        importlib.import_module(module)
    from pipeline.adapters.kafka.egress import Egress
    from pipeline.adapters.kafka.security import client_options

    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        acks="all",
        enable_idempotence=True,
        **client_options(settings),
    )
    engine = make_engine(settings.database_url)

    egress = Egress(producer, retention_hours=settings.topic_retention_hours)

    async def send(topic: str, key: Any, value: Any, headers: Any, partition: int) -> None:
        # The original record's time, as the workers' replay sends it: windows by record time
        # count the replay where the first delivery would have landed.
        await egress.deliver_reliably(
            topic, value, key=key, headers=headers, partition=partition,
            timestamp_ms=failures.original_timestamp_ms(headers), attempts=5,
        )  # fmt: skip

    await producer.start()
    try:
        service = DeadLetters(
            DeadLetterStore(engine), send, replay_limit=settings.replay_limit,
            max_age_seconds=settings.replay_max_age_seconds,
            redelivery_topic=redelivery_topic_name, known_agents=lambda: list(AGENT_SOURCES),
            replay_partition=replay_partition,
        )  # fmt: skip
        result = await service.replay(where, requested_by="cli")
    finally:
        await producer.stop()
        await engine.dispose()
    if not result.replayed and not result.refused:
        print("nothing to replay: no open dead letters match")
        return 0
    print(f"replayed {len(result.replayed)}: {' '.join(result.replayed) or '-'}")
    for refusal in result.refused:
        print(f"refused {refusal['id']}: {refusal['reason']}")
    return 1 if result.refused else 0
