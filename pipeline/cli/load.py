"""``python -m pipeline load``: send orders through a worker's API at a steady rate.

The load is open loop: order ``i`` is due at ``start + i / rate`` whatever happened to the
ones before it, so a slow worker meets the load it would meet in production instead of
slowing the tool down with it, and each latency is measured from the order's due time (a
request that had to wait for a free connection counts that wait). A closed loop that sends
the next order after each reply hides exactly the stalls a load test is for.

Exit status: 0 when every valid order was accepted (and every deliberately invalid one
refused with a 4xx), 1 when a valid order was refused or the worker failed, 2 for usage
errors, a worker that does not answer, or a token it does not take.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import signal
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

from pipeline.cli.ops import (
    CommandError,
    add_worker_options,
    api_token,
    bounded,
    call,
    worker_url,
)
from pipeline.cli.order_generator import OrderGenerator, PlannedOrder
from pipeline.settings import Settings

# ``post(path, body)`` -> (status, JSON reply or None); raises TransportError without an answer.
Post = Callable[[str, Any], Awaitable[tuple[int, Any]]]


class TransportError(Exception):
    """No HTTP answer at all: connection refused or reset, or a timeout."""


def percentile(values: Sequence[float], q: float) -> float | None:
    """The nearest-rank ``q``-th percentile (0 < q <= 100), or None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


@dataclass
class LoadSummary:
    """What happened to the orders sent; ``exit_code`` turns it into the command's verdict."""

    intended: int  # orders planned
    target_rate: float
    valid: int = 0  # valid orders sent (the others are meant to be refused)
    sent: int = 0
    accepted: int = 0
    accepted_valid: int = 0
    refused: Counter[int] = field(default_factory=Counter)  # by HTTP status
    valid_refused: int = 0
    invalid_accepted: int = 0  # the worker took an order it should have refused
    invalid_not_4xx: int = 0
    errors: int = 0  # no answer at all
    cancelled: int = 0
    cancel_refused: int = 0  # 409: inventory rejected it first; not the tool's failure
    cancel_failed: int = 0
    unauthorized: bool = False
    interrupted: bool = False
    elapsed: float = 0.0  # from the start to the last reply
    send_span: float = 0.0  # from the start to the last send
    max_behind: float = 0.0  # how late the tool itself sent an order (it could not keep up)
    latencies: list[float] = field(default_factory=list)
    first_problem: str = ""

    def record(self, order: PlannedOrder, status: int) -> None:
        if status == 201:
            self.accepted += 1
            if order.valid:
                self.accepted_valid += 1
            else:
                self.invalid_accepted += 1
                self.note(f"invalid order {order.index} was accepted")
            return
        self.refused[status] += 1
        if status in (401, 403):
            self.unauthorized = True
        elif order.valid:
            self.valid_refused += 1
            self.note(f"order {order.index} refused with {status}")
        elif not 400 <= status < 500:
            self.invalid_not_4xx += 1
            self.note(f"invalid order {order.index} answered {status}, not 4xx")

    def note(self, problem: str) -> None:
        self.first_problem = self.first_problem or problem

    @property
    def rate(self) -> float:
        """The rate orders went out at: n sends span n - 1 intervals."""
        return (self.sent - 1) / self.send_span if self.sent > 1 and self.send_span > 0 else 0.0

    @property
    def failures(self) -> int:
        return (
            self.valid_refused
            + self.invalid_accepted
            + self.invalid_not_4xx
            + self.errors
            + self.cancel_failed
        )

    def exit_code(self) -> int:
        if self.unauthorized:
            return 2
        complete = self.sent == self.intended and self.accepted_valid == self.valid
        return 0 if complete and not self.failures and not self.interrupted else 1

    def to_json(self) -> dict[str, Any]:
        def ms(q: float) -> float | None:
            value = percentile(self.latencies, q)
            return None if value is None else round(value * 1000, 2)

        return {
            "intended": self.intended,
            "valid": self.valid,
            "sent": self.sent,
            "accepted": self.accepted,
            "refused": {str(k): v for k, v in sorted(self.refused.items())},
            "valid_refused": self.valid_refused,
            "invalid_accepted": self.invalid_accepted,
            "errors": self.errors,
            "cancelled": self.cancelled,
            "cancel_refused": self.cancel_refused,
            "cancel_failed": self.cancel_failed,
            "elapsed_seconds": round(self.elapsed, 3),
            "target_rate": self.target_rate,
            "achieved_rate": round(self.rate, 2),
            "max_behind_schedule_ms": round(self.max_behind * 1000, 2),
            "latency_p50_ms": ms(50),
            "latency_p99_ms": ms(99),
            "interrupted": self.interrupted,
            "exit_code": self.exit_code(),
        }

    def lines(self) -> list[str]:
        j = self.to_json()
        refused = ", ".join(f"{k}: {v}" for k, v in j["refused"].items()) or "none"
        invalid = self.sent - self.valid
        out = [
            f"sent       {self.sent} of {self.intended} orders in {self.elapsed:.2f} s "
            f"({self.rate:.1f} orders/s, target {self.target_rate:g})",
            f"accepted   {self.accepted} ({self.accepted_valid} of {self.valid} valid)",
            f"refused    {sum(self.refused.values())} by status ({refused}); "
            f"{invalid} were meant to be invalid",
            f"cancelled  {self.cancelled}"
            + (f" ({self.cancel_refused} already rejected)" if self.cancel_refused else ""),
            f"errors     {self.errors} without an answer",
            f"latency    p50 {j['latency_p50_ms']} ms, p99 {j['latency_p99_ms']} ms "
            "(from each order's due time)",
        ]
        if self.max_behind > 0.1:
            out.append(
                f"pacing     up to {self.max_behind:.2f} s behind schedule: this "
                "machine could not send faster"
            )
        if self.exit_code() == 0:
            out.append("result     ok: every valid order accepted")
        elif self.unauthorized:
            out.append(
                "result     STOPPED: the worker refused the token (pass --token or set "
                "PIPELINE_API_TOKEN)"
            )
        else:
            why = "interrupted" if self.interrupted else self.first_problem
            out.append(
                f"result     FAILED ({self.failures} failures; first: {why}); see the worker's log"
            )
        return out


async def place(
    order: PlannedOrder, due: float, post: Post, summary: LoadSummary, clock: Callable[[], float]
) -> None:
    """One order, then its cancellation if the plan says so."""
    try:
        status, reply = await post("/orders", order.body)
    except TransportError as exc:
        summary.errors += 1
        summary.note(f"order {order.index}: {exc}")
        return
    summary.latencies.append(clock() - due)
    summary.record(order, status)
    if status != 201 or not order.cancel:
        return
    order_id = reply.get("order_id") if isinstance(reply, dict) else None
    try:
        status, _ = await post(f"/orders/{order_id}/cancel", None) if order_id else (0, None)
    except TransportError as exc:
        status = 0
        summary.note(f"cancel of order {order.index}: {exc}")
    if status == 200:
        summary.cancelled += 1
    elif status == 409:
        summary.cancel_refused += 1
    else:
        summary.cancel_failed += 1
        summary.note(f"cancel of order {order.index} answered {status}")


async def drive(
    orders: Iterable[PlannedOrder],
    rate: float,
    post: Post,
    summary: LoadSummary,
    *,
    stop: asyncio.Event | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Send ``orders`` open loop: order ``i`` at ``start + i / rate``, never waiting for
    replies in between. Stops scheduling on ``stop`` or when the worker refuses the token."""
    stop = stop or asyncio.Event()
    start = clock()
    in_flight: set[asyncio.Task[None]] = set()
    for i, order in enumerate(orders):
        due = start + i / rate
        delay = due - clock()
        if delay > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
        if stop.is_set() or summary.unauthorized:
            summary.interrupted = stop.is_set()
            break
        summary.max_behind = max(summary.max_behind, clock() - due)
        summary.send_span = clock() - start
        summary.sent += 1
        summary.valid += order.valid
        task = asyncio.create_task(place(order, due, post, summary, clock))
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)
    if in_flight:
        await asyncio.gather(*in_flight)
    summary.elapsed = clock() - start


@contextlib.asynccontextmanager
async def http_post(
    base: str, token: str, reply_timeout: float, max_in_flight: int
) -> AsyncIterator[Post]:
    import aiohttp

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession(
        headers=headers,
        connector=aiohttp.TCPConnector(limit=max_in_flight),
        timeout=aiohttp.ClientTimeout(total=reply_timeout),
    ) as http:

        async def post(path: str, body: Any) -> tuple[int, Any]:
            try:
                async with http.post(base + path, json=body) as resp:
                    status, raw = resp.status, await resp.read()
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise TransportError(f"{type(exc).__name__}: {exc}") from None
            try:
                return status, json.loads(raw)
            except ValueError:
                return status, None

        yield post


class ProgressReport:
    """A bar redrawn in place on a terminal; a plain line every ``interval`` s otherwise."""

    def __init__(self, summary: LoadSummary, out: TextIO, *, tty: bool, interval: float):
        self.summary, self.out, self.tty = summary, out, tty
        self.interval = 0.2 if tty else interval
        self.started = time.monotonic()

    def text(self) -> str:
        s = self.summary
        elapsed = time.monotonic() - self.started
        done = s.sent / s.intended if s.intended else 1.0
        figures = (
            f"{s.sent}/{s.intended}  accepted {s.accepted}  "
            f"refused {sum(s.refused.values())}  errors {s.errors}  "
            f"{s.sent / elapsed if elapsed else 0:.1f} orders/s"
        )
        if self.tty:
            bar = "#" * int(done * 30)
            return f"\r[{bar:<30}] {done:4.0%}  {figures}"
        return f"[{elapsed:7.1f}s] {done:4.0%}  {figures}\n"

    def show(self) -> None:
        self.out.write(self.text())
        self.out.flush()

    async def run(self, done: asyncio.Event) -> None:
        while not done.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), self.interval)
            self.show()
        if self.tty:
            self.out.write("\n")


async def run_load(base: str, token: str, args: argparse.Namespace) -> LoadSummary:
    generator = OrderGenerator(
        args.seed,
        customers=args.customers,
        skus=args.skus,
        cancel_ratio=args.cancel_ratio,
        invalid_ratio=args.invalid_ratio,
    )
    orders = (generator.order(i) for i in range(args.orders))  # made as they are sent
    summary = LoadSummary(args.orders, args.rate)
    stop, done = asyncio.Event(), asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    progress = None
    if not args.no_progress:
        report = ProgressReport(
            summary, sys.stderr, tty=sys.stderr.isatty(), interval=args.progress_interval
        )
        progress = asyncio.create_task(report.run(done))
    async with http_post(base, token, args.timeout, args.max_in_flight) as post:
        await drive(orders, args.rate, post, summary, stop=stop)
    done.set()
    if progress is not None:
        await progress
    return summary


def cmd_load(settings: Settings, args: argparse.Namespace) -> int:
    try:
        base = worker_url(settings, args.url)
        status, _ = call("GET", f"{base}/healthz", "", timeout=min(args.timeout, 10.0))
    except CommandError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if status != 200:
        print(
            f"error: {base}/healthz answered {status}: is that a pipeline worker?", file=sys.stderr
        )
        return 2
    summary = asyncio.run(run_load(base, api_token(settings, args.token), args))
    if args.json:
        print(json.dumps(summary.to_json(), indent=2))
    else:
        print("\n".join(summary.lines()))
    return summary.exit_code()


MAX_ORDERS = 1_000_000
count = bounded(int, 1, MAX_ORDERS, "a whole number")
positive = bounded(float, 0.0, math.inf, above=True)
ratio = bounded(float, 0.0, 1.0)


def add_parser(sub: Any) -> None:
    load = sub.add_parser(
        "load",
        help="send N orders at R orders/s through a worker's API",
        description="Sends orders open loop (each due at start + i/rate, whatever the replies) "
        "from many customers, a few of them frequent; cancels some, and with "
        "--invalid-ratio sends some invalid ones that must be refused with a 4xx. "
        "Prints progress on stderr and a summary. Exits 0 when every valid order "
        "was accepted, 1 if one was refused or the worker failed, 2 for usage "
        "errors, an unreachable worker or a refused token.",
    )
    load.add_argument("-n", "--orders", type=count, default=1000, help="orders to send (1000)")
    load.add_argument("-r", "--rate", type=positive, default=50.0, help="orders per second (50)")
    add_worker_options(load)
    load.add_argument(
        "--customers",
        type=count,
        default=200,
        help="distinct customers, Zipf-weighted (200)",
    )
    load.add_argument("--skus", type=count, default=50, help="distinct SKUs (50)")
    load.add_argument(
        "--cancel-ratio",
        type=ratio,
        default=0.1,
        help="share of accepted orders then cancelled (0.1)",
    )
    load.add_argument(
        "--invalid-ratio",
        type=ratio,
        default=0.0,
        help="share of orders sent invalid on purpose (0)",
    )
    load.add_argument("--seed", type=int, default=7, help="same seed, same orders (7)")
    load.add_argument(
        "--timeout", type=positive, default=10.0, help="seconds to wait for each reply (10)"
    )
    load.add_argument(
        "--max-in-flight",
        type=count,
        default=100,
        help="concurrent connections to the worker (100)",
    )
    load.add_argument("--json", action="store_true", help="the summary as JSON")
    load.add_argument("--no-progress", action="store_true", help="no progress on stderr")
    load.add_argument(
        "--progress-interval",
        type=positive,
        default=5.0,
        help="seconds between progress lines when stderr is not a terminal (5)",
    )
