"""``python -m pipeline outbox parked|requeue|discard``: parked outbox rows from a shell.

They read and change the database directly (no worker needed), through the same code as
``/admin/outbox/*`` (:mod:`pipeline.services.outbox_admin`); a requeued row is published by
whichever worker's forwarder is active, at its next poll (at once on PostgreSQL).
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import timedelta
from typing import Any

from pipeline.cli.database import operator, page_limit, print_table, with_database
from pipeline.settings import Settings


def _row_id(raw: str) -> int:
    if not raw.isdigit() or not 1 <= int(raw) < 2**63:
        raise argparse.ArgumentTypeError(f"{raw!r} is not an outbox row id (a positive integer)")
    return int(raw)


def add_parsers(actions: Any) -> None:
    from pipeline.domain.paging import DEFAULT_PAGE, MAX_PAGE

    parked = actions.add_parser(
        "parked", help="list parked rows: id, topic, key, age, attempts, why parked",
        description="Rows Kafka refused for good, oldest first, a page at a time: pass the "
                    "printed --after to see the next page.",
    )  # fmt: skip
    parked.add_argument("--after", type=_row_id, help="start after this row id (paging)")
    parked.add_argument("--limit", type=page_limit, default=DEFAULT_PAGE,
                        help=f"rows per page, 1-{MAX_PAGE} ({DEFAULT_PAGE})")  # fmt: skip
    parked.add_argument("--json", action="store_true", help="the page as JSON")
    requeue = actions.add_parser(
        "requeue", help="put parked rows back to the forwarder (once their cause is fixed)",
        description="Each row goes back to pending and is published once. A row whose key "
                    "(customer) has later events already published or pending is refused: "
                    "sending it now would deliver it after them. --out-of-order sends it "
                    "anyway. Exits 1 if any row was refused.",
    )  # fmt: skip
    requeue.add_argument("ids", nargs="*", type=_row_id, metavar="ID", help="parked row ids")
    requeue.add_argument("--all", action="store_true", help="every parked row")
    requeue.add_argument("--out-of-order", action="store_true",
                         help="requeue even after later events of the same key")  # fmt: skip
    requeue.add_argument("--why", help="why (kept with the record of the requeue)")
    discard = actions.add_parser(
        "discard", help="mark parked rows discarded: never published, recorded with who and why",
        description="Exits 1 if any row named was not discarded (unknown, or not parked).",
    )  # fmt: skip
    discard.add_argument("ids", nargs="+", type=_row_id, metavar="ID", help="parked row ids")
    discard.add_argument("--why", required=True, help="why they are thrown away (recorded)")
    for p in (requeue, discard):
        p.add_argument("--by", default=None, help="who asks (default: cli:USER@HOST)")
        p.add_argument("--json", action="store_true", help="the outcome as JSON")


def _operations(settings: Settings, engine: Any) -> Any:
    from pipeline.adapters.db.outbox_admin import OutboxAdmin
    from pipeline.services.outbox_admin import OutboxOperations

    retention = timedelta(seconds=settings.outbox_retention_seconds)
    return OutboxOperations(OutboxAdmin(engine), retention=retention)


def cmd_outbox_verb(settings: Settings, args: argparse.Namespace) -> int:
    from pipeline.domain.outbox import parse_discard_request, parse_requeue_request
    from pipeline.domain.paging import BadRequest

    if args.action == "parked":
        return _parked(settings, args.after, args.limit, args.json)
    try:
        body: dict[str, Any] = {"by": args.by or operator()}
        if args.ids:
            body["ids"] = args.ids
        if args.why is not None:
            body["why"] = args.why
        if args.action == "requeue":
            body |= {"all": args.all, "out_of_order": args.out_of_order}
            request: Any = parse_requeue_request(body, by=operator())
        else:
            request = parse_discard_request(body, by=operator())
    except BadRequest as exc:
        names = {"ids": "ID", "all": "--all", "out_of_order": "--out-of-order"}
        for p in exc.problems:
            name = names.get(p["field"], "--" + p["field"].replace("_", "-"))
            message = p["message"].replace('"', "")
            print(f"error: {name}: {message}", file=sys.stderr)
        return 2

    async def act(engine: Any) -> Any:
        service = _operations(settings, engine)
        if args.action == "requeue":
            return await service.requeue(request)
        return await service.discard(request)

    verb = "requeued" if args.action == "requeue" else "discarded"
    result = with_database(settings, act)
    if args.json:
        print(json.dumps(result.to_json(verb), indent=2))
    else:
        print(f"{verb} {len(result.done)}: {' '.join(map(str, result.done)) or '-'}")
        for refusal in result.refused:
            print(f"refused {refusal['id']}: {refusal['reason']}")
    return 1 if result.refused else 0


def _parked(settings: Settings, after: int | None, limit: int, as_json: bool) -> int:
    from pipeline.domain.events import utc_now
    from pipeline.streaming.topics import ORDER_EVENTS

    async def read(engine: Any) -> Any:
        return await _operations(settings, engine).parked(after, limit)

    rows, after_last = with_database(settings, read)
    topic, now = settings.topic_name(ORDER_EVENTS), utc_now()
    page = [r.to_json(topic, now) for r in rows]
    if as_json:
        print(json.dumps({"parked": page, "next": after_last}, indent=2))
        return 0
    if not page:
        print("no parked rows" if after is None else f"no parked rows after {after}")
        return 0
    table = [("ID", "TOPIC", "KEY", "EVENT", "AGE", "ATTEMPTS", "PARKED BECAUSE")]
    table += [(str(r["id"]), r["topic"], r["key"], r["event_type"], _age(r["age_seconds"]),
               str(r["attempts"]), (r["parked_reason"] or "-")[:80]) for r in page]  # fmt: skip
    print_table(table, right=(0, 4, 5))
    if after_last is not None:
        print(f"more: outbox parked --after {after_last}")
    return 0


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.0f}h"
    return f"{seconds / 86400:.0f}d"
