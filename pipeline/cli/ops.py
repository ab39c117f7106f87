"""``python -m pipeline stock|outbox|topics``: the operator's everyday questions from a shell.

``stock`` goes through a worker's HTTP API, like any client: the stock lives in a table that
only its owner holds, and a change must be applied in order with the reservations. ``outbox``
reads (and, for parked rows, changes: :mod:`pipeline.cli.outbox`) the database, so it
answers with no worker running. ``topics create`` talks to Kafka
(``pipeline.cli.topics``). Each exits 2 when it cannot reach what it needs (with a message
saying what to do), and 1 when what it found is wrong.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import shlex
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

from pipeline.cli.database import page_limit, print_table
from pipeline.cli.errors import CommandError
from pipeline.domain.paging import DEFAULT_PAGE, MAX_PAGE
from pipeline.settings import Settings

MAX_STOCK = 1_000_000_000  # what PUT /inventory/{sku} accepts
N = TypeVar("N", int, float)


# -- talking to a worker ---------------------------------------------------------------------


def worker_url(settings: Settings, url: str | None) -> str:
    """The base URL of a worker: ``--url``, else this machine's PIPELINE_WEB_HOST/PORT."""
    if url is None:
        url = settings.local_url()
    if not url.startswith(("http://", "https://")) or not urllib.parse.urlsplit(url).hostname:
        raise CommandError(f"--url {url!r} must be an http:// or https:// URL with a host")
    return url.rstrip("/")


def api_token(settings: Settings, given: str | None) -> str:
    return settings.api_token.get() if given is None else given


def call(
    method: str, url: str, token: str, body: Any = None, *, timeout: float = 10.0
) -> tuple[int, Any]:
    """One request; the status and the JSON reply (None if not JSON). A worker that does not
    answer raises :class:`CommandError`; a 401 too, since only the caller can fix it."""
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"} if data is not None else {}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=data, method=method, headers=headers)  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:  # noqa: S310 - http(s) only
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    except OSError as exc:
        base = urllib.parse.urlsplit(url)
        raise CommandError(
            f"cannot reach a worker at {base.scheme}://{base.netloc} ({exc}); start one "
            "(python -m pipeline worker) or pass --url"
        ) from None
    if status == 401:
        raise CommandError(
            f"{method} {url} answered 401: the worker wants a bearer token; pass --token or "
            "set PIPELINE_API_TOKEN to the worker's token"
        )
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, None


def call_when_ready(
    method: str, url: str, token: str, body: Any = None, *, timeout: float
) -> tuple[int, Any]:
    """Like :func:`call`, but waits out 503s (partitions moving, database restarting)."""
    deadline = time.monotonic() + timeout
    while True:
        status, reply = call(method, url, token, body, timeout=timeout)
        if status != 503 or time.monotonic() >= deadline:
            return status, reply
        time.sleep(0.5)


# -- stock -----------------------------------------------------------------------------------


def _sku(raw: str) -> str:
    if not 1 <= len(raw) <= 64:
        raise argparse.ArgumentTypeError(f"SKU {raw!r} must be 1 to 64 characters")
    return raw


def bounded(
    convert: Callable[[str], N], low: N, high: N, what: str = "a number", *, above: bool = False
) -> Callable[[str], N]:
    """An argparse type: ``convert`` the argument and check ``low <= value <= high`` (or
    ``low < value`` with ``above``), with a message that names the accepted range."""

    def parse(raw: str) -> N:
        try:
            value = convert(raw)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{raw!r} is not {what}") from None
        if above and not (math.isfinite(value) and value > low):
            raise argparse.ArgumentTypeError(f"{raw} must be a number above {shown(low)}")
        if not above and not low <= value <= high:
            raise argparse.ArgumentTypeError(
                f"{raw} must be between {shown(low)} and {shown(high)}"
            )
        return value

    def shown(bound: N) -> str:
        return f"{bound:g}" if isinstance(bound, float) else str(bound)

    return parse


def _inventory_url(base: str, sku: str) -> str:
    return f"{base}/inventory/{urllib.parse.quote(sku, safe='')}"


def cmd_stock(settings: Settings, args: argparse.Namespace) -> int:
    base = worker_url(settings, args.url)
    token = api_token(settings, args.token)
    if args.action == "set":
        status, reply = call_when_ready(
            "PUT",
            _inventory_url(base, args.sku),
            token,
            {"available": args.quantity},
            timeout=args.timeout,
        )
        if status != 202:
            print(
                f"error: setting {args.sku} answered {status}: {json.dumps(reply)}", file=sys.stderr
            )
            return 1
        print(
            f"{args.sku}: available set to {args.quantity} (accepted; the SKU's owner applies "
            "it in order with reservations)"
        )
        return 0
    if args.action == "list":
        return _stock_list(base, token, args)
    if not args.skus:
        raise CommandError(
            "name the SKUs to show, e.g. `stock show sku-000 sku-001`, or list them all "
            "with `stock list`"
        )
    found: list[dict[str, Any]] = []
    for sku in args.skus:
        status, reply = call_when_ready(
            "GET", _inventory_url(base, sku), token, timeout=args.timeout
        )
        if status == 200:
            found.append(
                {"sku": sku, "available": reply["available"], "reserved": reply["reserved"]}
            )
        elif status == 404:
            found.append({"sku": sku, "error": "not_found"})
        else:
            print(
                f"error: GET /inventory/{sku} answered {status}: {json.dumps(reply)}",
                file=sys.stderr,
            )
            return 1
    if args.json:
        print(json.dumps(found, indent=2))
    else:
        rows = [("SKU", "AVAILABLE", "RESERVED")]
        rows += [
            (s["sku"], str(s["available"]), str(s["reserved"]))
            if "error" not in s
            else (s["sku"], "unknown", "-")
            for s in found
        ]
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        for row in rows:
            print(
                f"{row[0].ljust(widths[0])}  {row[1].rjust(widths[1])}  {row[2].rjust(widths[2])}"
            )
    return 1 if any("error" in s for s in found) else 0


def _stock_list(base: str, token: str, args: argparse.Namespace) -> int:
    query = {"limit": str(args.limit), **({"after": args.after} if args.after else {})}
    url = f"{base}/inventory?{urllib.parse.urlencode(query)}"
    status, reply = call_when_ready("GET", url, token, timeout=args.timeout)
    if status != 200 or not isinstance(reply, dict):
        print(f"error: GET /inventory answered {status}: {json.dumps(reply)}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(reply, indent=2))
        return 0
    if not reply["skus"]:
        print("no SKUs" if args.after is None else f"no SKUs after {args.after!r}")
        return 0
    rows = [("SKU", "AVAILABLE", "RESERVED")]
    rows += [(s["sku"], str(s["available"]), str(s["reserved"])) for s in reply["skus"]]
    print_table(rows, right=(1, 2))
    if reply["next"] is not None:
        print(f"more: stock list --after {shlex.quote(reply['next'])}")
    return 0


# -- outbox ----------------------------------------------------------------------------------


async def outbox_status(database_url: str, retention_seconds: int) -> dict[str, Any]:
    """Backlog, its oldest row's age, parked rows and the rows published within retention."""
    from pipeline.adapters.db.outbox import OutboxStore
    from pipeline.adapters.db.schema import make_engine
    from pipeline.domain.events import utc_now

    engine = make_engine(database_url)
    try:
        store = OutboxStore(engine)
        now = utc_now()
        waiting, oldest = await store.backlog()
        counts = await store.counts()
        published = await store.published_since(now - timedelta(seconds=retention_seconds))
    finally:
        await engine.dispose()
    age = None if oldest is None else round(max(0.0, (now - oldest).total_seconds()), 3)
    return {
        "waiting": waiting,
        "oldest_unpublished_age_seconds": age,
        "parked": counts.get("parked", 0),
        "published_in_retention_window": published,
        "retention_seconds": retention_seconds,
    }


def cmd_outbox(settings: Settings, args: argparse.Namespace) -> int:
    if args.action != "status":
        from pipeline.cli.outbox import cmd_outbox_verb

        return cmd_outbox_verb(settings, args)
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import DBAPIError

    from pipeline.domain.failures import Unavailable

    url = make_url(settings.database_url)
    shown = url.render_as_string(hide_password=True)
    if url.get_backend_name() == "sqlite" and not Path(url.database or "").is_file():
        raise CommandError(
            f"no database at {shown}: set DATABASE_URL, or create it with "
            "`python -m pipeline migrate`"
        )
    try:
        status = asyncio.run(
            outbox_status(settings.database_url, settings.outbox_retention_seconds)
        )
    except (Unavailable, DBAPIError, OSError) as exc:
        cause = exc.__cause__ or exc  # the driver's error behind Unavailable
        reason = str(getattr(cause, "orig", None) or cause).splitlines()[0]
        raise CommandError(
            f"cannot read the outbox at {shown} ({reason}); check DATABASE_URL, and run "
            "`python -m pipeline migrate` if the schema is missing"
        ) from None
    if args.json:
        print(json.dumps({"database": shown, **status}, indent=2))
        return 0
    age = status["oldest_unpublished_age_seconds"]
    print(f"outbox at {shown}")
    print(
        f"waiting    {status['waiting']:>8}"
        + (f"   oldest {age:.1f} s old" if age is not None else "")
    )
    print(
        f"parked     {status['parked']:>8}"
        + ("   (never publishable: see their last_error)" if status["parked"] else "")
    )
    print(
        f"published  {status['published_in_retention_window']:>8}   in the last "
        f"{status['retention_seconds']} s (PIPELINE_OUTBOX_RETENTION_SECONDS)"
    )
    return 0


# -- wiring ----------------------------------------------------------------------------------


def add_worker_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", help="a worker's base URL (default: PIPELINE_WEB_HOST/PORT)")
    p.add_argument(
        "--token",
        help="bearer token for write endpoints (default: "
        "PIPELINE_API_TOKEN; the environment keeps it out of `ps`)",
    )


def add_parsers(sub: Any) -> None:
    stock = sub.add_parser("stock", help="set and show stock through a worker's API")
    actions = stock.add_subparsers(dest="action", required=True)
    setting = actions.add_parser(
        "set",
        help="set the units available of a SKU (PUT /inventory/{sku})",
        description="Exits 0 once the worker accepted the change (the SKU's owner applies it "
        "within moments), 1 if it refused, 2 if no worker answers.",
    )
    setting.add_argument("sku", type=_sku, help="the SKU, 1-64 characters")
    quantity = bounded(int, 0, MAX_STOCK, "a whole number of units")
    setting.add_argument("quantity", type=quantity, help=f"units available, 0-{MAX_STOCK}")
    show = actions.add_parser(
        "show",
        help="available and reserved units per SKU (GET /inventory/{sku})",
        description="Exits 0 when every SKU is known, 1 if some is not, 2 if no worker answers.",
    )
    show.add_argument("skus", nargs="*", metavar="SKU", help="the SKUs to show")
    show.add_argument("--json", action="store_true", help="a JSON list instead of a table")
    listing = actions.add_parser(
        "list",
        help="every SKU with its stock, a page at a time (GET /inventory)",
        description="SKUs in order, gathered from every worker's partitions; pass the printed "
        "--after for the next page. Exits 1 if the workers cannot answer for every partition.",
    )
    listing.add_argument("--after", type=_sku, help="start after this SKU (paging)")
    listing.add_argument("--limit", type=page_limit, default=DEFAULT_PAGE,
                         help=f"SKUs per page, 1-{MAX_PAGE} ({DEFAULT_PAGE})")  # fmt: skip
    listing.add_argument("--json", action="store_true", help="the page as JSON")
    for p in (setting, show, listing):
        add_worker_options(p)
        p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait (30)")

    outbox = sub.add_parser(
        "outbox", help="the outbox's backlog and parked rows, from the database"
    )
    outbox_actions = outbox.add_subparsers(dest="action", required=True)
    status = outbox_actions.add_parser(
        "status",
        help="rows waiting, the oldest one's age, parked and published rows",
        description="Reads DATABASE_URL directly (no worker needed): rows waiting to be "
        "published, the age of the oldest, rows parked as unpublishable, and rows "
        "published within PIPELINE_OUTBOX_RETENTION_SECONDS.",
    )
    status.add_argument("--json", action="store_true", help="the figures as JSON")
    from pipeline.cli import outbox as outbox_verbs

    outbox_verbs.add_parsers(outbox_actions)

    from pipeline.cli import topics

    topics.add_parser(sub)


def run(settings: Settings, args: argparse.Namespace) -> int:
    from pipeline.cli import topics

    handler = {"stock": cmd_stock, "outbox": cmd_outbox, "topics": topics.cmd_topics}
    try:
        return handler[args.command](settings, args)
    except CommandError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
