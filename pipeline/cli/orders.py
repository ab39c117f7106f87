"""``python -m pipeline orders list --customer ID``: a customer's orders, newest first, read
from the database (the source of truth for orders; no worker needed), a page at a time."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from pipeline.cli.database import page_limit, print_table, with_database
from pipeline.cli.errors import CommandError
from pipeline.settings import Settings


def add_parser(sub: Any) -> None:
    from pipeline.domain.paging import DEFAULT_PAGE, MAX_PAGE

    orders = sub.add_parser("orders", help="a customer's orders, from the database")
    actions = orders.add_subparsers(dest="action", required=True)
    listing = actions.add_parser(
        "list", help="a customer's orders, newest first (GET /customers/{id}/orders)",
        description="Pass the printed --before for the next (older) page.",
    )  # fmt: skip
    listing.add_argument("--customer", required=True, help="the customer id, 1-64 characters")
    listing.add_argument("--before", help="the cursor a previous page printed (paging)")
    listing.add_argument("--limit", type=page_limit, default=DEFAULT_PAGE,
                         help=f"orders per page, 1-{MAX_PAGE} ({DEFAULT_PAGE})")  # fmt: skip
    listing.add_argument("--json", action="store_true", help="the page as JSON")


def run(settings: Settings, args: argparse.Namespace) -> int:
    from datetime import datetime

    from pipeline.adapters.db.orders import OrderStore
    from pipeline.domain.paging import key, order_cursor, parse_order_cursor

    problems: list[dict[str, str]] = []
    key(args.customer, problems, "customer")
    before = parse_order_cursor(args.before, problems)
    if problems:
        for p in problems:
            print(f"error: --{p['field']}: {p['message']}", file=sys.stderr)
        return 2

    async def read(engine: Any) -> list[dict[str, Any]]:
        return await OrderStore(engine).customer_orders(args.customer, before, args.limit + 1)

    try:
        found = with_database(settings, read)
    except CommandError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    page, cursor = found[: args.limit], None
    if len(found) > args.limit:
        last = page[-1]
        cursor = order_cursor(datetime.fromisoformat(last["created_at"]), last["order_id"])
    if args.json:
        print(json.dumps({"customer_id": args.customer, "orders": page, "next": cursor}, indent=2))
        return 0
    if not page:
        print(f"no orders of customer {args.customer!r}" + (" before that" if before else ""))
        return 0
    rows = [("ORDER", "STATUS", "TOTAL", "CREATED")]
    rows += [(o["order_id"], o["status"], o["total"], o["created_at"][:19]) for o in page]
    print_table(rows, right=(2,))
    if cursor is not None:
        print(f"more: orders list --customer {args.customer} --before {cursor}")
    return 0
