"""The dashboard on two real workers, read in headless Chromium (Debian's, driven by
Playwright): the page shows the whole cluster's figures, the same as the API's, and follows
new orders as they come.

``UPDATE_SCREENSHOT=1`` also saves the page to ``docs/dashboard.png``.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import pytest
from sqlalchemy import select

from pipeline.adapters.db.schema import make_engine, migrate, orders
from pipeline.domain.events import money
from pipeline.settings import PROJECT_ROOT
from tests.integration.workers import Worker, WorkerFactory, create_topics, produce, wait_for

T = TypeVar("T")
CHROMIUM = Path(os.environ.get("PIPELINE_CHROMIUM", "/usr/bin/chromium"))
SCREENSHOT = PROJECT_ROOT / "docs" / "dashboard.png"
# analytics.revenue is left to the workers: it has one partition.
TOPICS = ["orders.events", "inventory.commands", "inventory.events", "orders.status"]
STOCK = {"sku-apple": 400, "sku-pear": 250, "sku-fig": 60, "sku-kiwi": 30}
CUSTOMERS = [f"customer-{i:02d}" for i in range(16)]
# A record that is no event, and JSON missing an event's fields: both agents reading
# orders.events (analytics, inventory-requests) dead-letter each.
POISON = [(b"customer-00", b"\xff not json"), (b"customer-01", b'{"event_type": "OrderCreated"}')]
ORDERS_SHOWN = "Number(document.querySelector('[data-testid=orders-created]').textContent)"
ENV = {"PIPELINE_OUTBOX_POLL_INTERVAL": "0.05", "PIPELINE_REVENUE_WINDOW_SECONDS": "4"}


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Chromium from Debian's package: `make chromium` installs it. Playwright never
    downloads a browser of its own here."""
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: the dashboard test needs Debian's Chromium "
            "(`make chromium`, i.e. apt-get install -y chromium), or PIPELINE_CHROMIUM=<path>"
        )
    os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"]
        )
        try:
            yield chromium
        finally:
            chromium.close()


def off_loop(fn: Callable[..., T], *args: Any) -> T:
    """Run ``fn`` in another thread: Playwright's sync API keeps an event loop running in this
    one, so ``asyncio.run`` (the Kafka helpers, migrations, database reads) cannot run here."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(fn, *args).result()


def place(worker: Worker, customer: str, rng: random.Random) -> str:
    items = [
        {"sku": sku, "quantity": rng.randint(1, 4), "unit_price": f"{rng.randint(3, 60)}.49"}
        for sku in rng.sample(sorted(STOCK), rng.randint(1, 3))
    ]
    status, body = worker.post(
        "/orders",
        {"customer_id": customer, "customer_email": f"{customer}@example.com", "items": items},
    )
    assert status == 201, body
    return str(body["order_id"])


def db_figures(url: str) -> dict[str, dict[str, Any]]:
    """Per customer, the contract's figures from the database (the source of truth)."""

    async def read() -> list[Any]:
        engine = make_engine(url)
        async with engine.connect() as conn:
            rows = (await conn.execute(select(orders))).all()
        await engine.dispose()
        return list(rows)

    out: dict[str, dict[str, Any]] = {}
    for r in off_loop(asyncio.run, read()):
        empty = {"customer_id": r.customer_id, "order_count": 0, "cancelled_count": 0,
                 "total_spent": Decimal(0)}  # fmt: skip
        f = out.setdefault(r.customer_id, empty)
        f["order_count"] += 1
        if r.status == "cancelled":
            f["cancelled_count"] += 1
        else:
            f["total_spent"] += r.total
    return out


def expected_top(url: str, n: int = 10) -> list[dict[str, Any]]:
    ranked = sorted(
        db_figures(url).values(),
        key=lambda f: (-f["total_spent"], -f["order_count"], f["customer_id"]),
    )
    return [{**f, "total_spent": money(f["total_spent"])} for f in ranked[:n]]


def settled(worker: Worker, url: str, posted: int) -> dict[str, Any] | None:
    """The dashboard's figures once everything posted is processed everywhere, else None."""
    status, data = worker.get("/dashboard/data")
    if status != 200 or not data["complete"]:
        return None
    done = (
        data["throughput"]["orders_created"] == posted
        and data["outbox"]["backlog"] == 0
        and data["consumer_lag"]["total"] == 0
        and data["dead_letters"]["total"] >= len(POISON) * 2
        and data["top_customers"] == expected_top(url)
    )
    return data if done else None


def rows(page: Any, body_id: str) -> list[list[str]]:
    return [
        [c.strip() for c in r]
        for r in page.eval_on_selector_all(
            f"#{body_id} tr", "rs => rs.map(r => [...r.cells].map(c => c.textContent))"
        )
    ]


def wait_page(page: Any, expression: str, timeout: float, what: str) -> Any:
    """Poll ``expression`` in the page until it is truthy. (Playwright's ``wait_for_function``
    evaluates its predicate with ``eval``, which the page's CSP rightly forbids.)"""
    return wait_for(lambda: page.evaluate(expression), timeout, what, interval=0.25)


def text(page: Any, testid: str) -> str:
    return str(page.text_content(f"[data-testid={testid}]")).strip()


def test_dashboard_shows_the_whole_clusters_figures_and_follows_new_orders(
    workers: WorkerFactory, kafka_bootstrap: str, sqlite_url: str, browser: Any
) -> None:
    off_loop(migrate, sqlite_url)
    off_loop(asyncio.run, create_topics(kafka_bootstrap, [workers.topic(t) for t in TOPICS]))
    w1, w2 = workers.start("w1", **ENV), workers.start("w2", **ENV)
    for sku, units in STOCK.items():
        assert w1.put(f"/inventory/{sku}", {"available": units})[0] == 202
    wait_for(lambda: all((w2.get(f"/inventory/{s}")[1] or {}).get("available") == n
                         for s, n in STOCK.items()), 60, "stock to be set")  # fmt: skip

    # Orders over a few revenue windows, through both workers; some cancelled.
    rng = random.Random(7)
    weights = [1 / (i + 1) for i in range(len(CUSTOMERS))]
    placed: list[str] = []
    for n in range(48):
        placed.append(place((w1, w2)[n % 2], rng.choices(CUSTOMERS, weights)[0], rng))
        if n % 9 == 4:
            assert w2.post(f"/orders/{placed[n // 2]}/cancel", {})[0] in (200, 409)
        if n % 8 == 7:
            time.sleep(1.5)
    off_loop(asyncio.run, produce(kafka_bootstrap, workers.topic("orders.events"), POISON))

    data = wait_for(lambda: settled(w1, sqlite_url, len(placed)), 120, "the dashboard to settle")
    # Both workers answered, and each owns part of the customers' partitions.
    assert sorted(w["url"] for w in data["workers"]) == sorted((w1.url, w2.url))
    assert all(w["ready"] and w["partitions"] for w in data["workers"])
    assert sorted(p for w in data["workers"] for p in w["partitions"]) == [0, 1, 2, 3]
    assert {row["worker"] for row in data["consumer_lag"]["partitions"]} == {w1.url, w2.url}
    # Any worker answers the same figures.
    assert settled(w2, sqlite_url, len(placed)) is not None

    page = browser.new_page(viewport={"width": 1360, "height": 1000})
    requests: list[str] = []
    problems: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    response = page.goto(w2.url + "/dashboard")
    assert response is not None and response.status == 200
    assert "default-src 'none'" in response.headers["content-security-policy"]
    wait_page(page, "document.body.dataset.renders >= 1", 30, "the page to render")
    status_live = "document.querySelector('[data-testid=status]').textContent === 'live'"
    wait_page(page, status_live, 30, "the page to show the whole cluster")
    shown = page.evaluate("window.dashboardData")

    # The page shows what the JSON says ...
    assert float(text(page, "events-per-second")) == shown["throughput"]["events_per_second"]
    assert int(text(page, "orders-created")) == shown["throughput"]["orders_created"] == len(placed)
    assert int(text(page, "outbox-backlog")) == shown["outbox"]["backlog"] == 0
    assert int(text(page, "lag-total")) == shown["consumer_lag"]["total"] == 0
    assert text(page, "worker-count") == "2"
    lag = page.eval_on_selector_all(
        "#lag td[data-partition]",
        "cs => cs.map(c => [c.parentElement.dataset.topic, Number(c.dataset.partition),"
        " Number(c.textContent), c.dataset.worker])",
    )
    assert sorted(lag) == sorted(
        [p["topic"], p["partition"], p["records"], p["worker"]]
        for p in shown["consumer_lag"]["partitions"]
    )
    agents = {r[0]: r for r in rows(page, "agents")}
    assert set(agents) >= {"analytics", "inventory-requests", "inventory", "order-status",
                           "notifications", "revenue"}  # fmt: skip
    for a in shown["throughput"]["by_agent"]:
        assert int(agents[a["agent"]][2]) == a["events_processed"] > 0

    # ... and what the API says: top customers, dead letters, revenue windows.
    top = rows(page, "top-customers")
    assert [r[1] for r in top] == [c["customer_id"] for c in expected_top(sqlite_url)]
    for _, customer, order_count, cancelled, spent in top:
        status, stats = w1.get(f"/customers/{customer}/stats")
        assert status == 200
        figures = (stats["order_count"], stats["cancelled_count"], stats["total_spent"])
        assert (int(order_count), int(cancelled), spent) == figures
    status, listed = w1.get("/dead-letters")
    assert status == 200
    dead = len(POISON) * 2
    assert int(text(page, "dead-letters-total")) == len(listed["dead_letters"]) == dead
    assert rows(page, "dead-letters")[0][:2] == ["poison", str(dead)]
    status, revenue = w2.get("/analytics/revenue")
    assert status == 200 and len(revenue["windows"]) >= 2
    bars = page.eval_on_selector_all(
        "#revenue-chart rect",
        "rs => rs.map(r => [r.dataset.windowStart, r.dataset.revenue, Number(r.dataset.orders)])",
    )
    assert sorted(bars) == sorted(
        [w["window_start"], w["revenue"], w["orders"]] for w in revenue["windows"]
    )

    # It refreshes: more orders (a new biggest customer among them) show up without a reload.
    renders = page.evaluate("Number(document.body.dataset.renders)")

    def more_orders() -> None:
        for n in range(30):
            place((w1, w2)[n % 2], rng.choice(CUSTOMERS[:6]), rng)
            time.sleep(0.15)
        vip = {"customer_id": "customer-vip", "customer_email": "vip@example.com",
               "items": [{"sku": "sku-apple", "quantity": 2, "unit_price": "990.00"}]}  # fmt: skip
        for _ in range(3):
            assert w1.post("/orders", vip)[0] == 201

    with ThreadPoolExecutor(1) as pool:
        feeding = pool.submit(more_orders)
        wait_page(page, f"{ORDERS_SHOWN} > {len(placed)}", 60, "new orders on the page")
        feeding.result(timeout=120)
    posted = len(placed) + 33
    top_is_vip = "document.querySelector('#top-customers tr').dataset.customer === 'customer-vip'"
    wait_page(page, top_is_vip, 90, "the new top customer on the page")
    assert page.evaluate("Number(document.body.dataset.renders)") > renders
    if os.environ.get("UPDATE_SCREENSHOT") == "1":
        SCREENSHOT.parent.mkdir(exist_ok=True)
        page.screenshot(path=str(SCREENSHOT), full_page=True)

    final = wait_for(lambda: settled(w1, sqlite_url, posted), 120, "the new orders to settle")
    wait_page(page, f"{ORDERS_SHOWN} === {posted}", 30, "every order on the page")
    assert final["top_customers"][0]["customer_id"] == "customer-vip"
    assert w1.get("/customers/customer-vip/stats")[1]["total_spent"] == "5940.00"

    # Nothing but the worker itself was asked for anything, and the page raised no error.
    assert requests and all(u.startswith(w2.url + "/dashboard") for u in requests), requests
    assert not problems, problems
    page.close()


def test_with_a_token_the_figures_need_it_and_the_page_asks_for_it(
    workers: WorkerFactory, kafka_bootstrap: str, sqlite_url: str, browser: Any
) -> None:
    """The figures name customers and their spend: with PIPELINE_API_TOKEN set they take the
    token, the workers send it to each other, and the page asks its user for it once."""
    token = "dash-token-3b9e"
    auth = {"Authorization": f"Bearer {token}"}
    off_loop(migrate, sqlite_url)
    off_loop(asyncio.run, create_topics(kafka_bootstrap, [workers.topic(t) for t in TOPICS]))
    w1 = workers.start("w1", PIPELINE_API_TOKEN=token, **ENV)
    w2 = workers.start("w2", PIPELINE_API_TOKEN=token, **ENV)
    for path in ("/dashboard/data", "/dashboard/worker"):
        status, reply = w1.get(path)
        assert (status, reply["error"]) == (401, "unauthorized")

    def complete() -> dict[str, Any] | None:
        status, data = http_get_with(w1.url + "/dashboard/data", auth)
        return data if status == 200 and data["complete"] else None

    data = wait_for(complete, 60, "both workers' figures, each asked with the token")
    assert sorted(w["url"] for w in data["workers"]) == sorted((w1.url, w2.url))

    page = browser.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda e: problems.append(str(e)))
    response = page.goto(w2.url + "/dashboard")
    assert response is not None and response.status == 200  # the page holds no figures
    status_is = "document.querySelector('[data-testid=status]').textContent === '{}'"
    wait_page(page, status_is.format("token needed"), 30, "the page to ask for the token")
    assert page.is_visible("[data-testid=token-prompt]")
    page.fill("[data-testid=token]", "wrong")
    page.press("[data-testid=token]", "Enter")
    wait_page(page, "document.querySelector('[data-testid=token-hint]').textContent"
                    ".includes('refused')", 30, "the wrong token to be refused")  # fmt: skip
    page.fill("[data-testid=token]", token)
    page.click("[data-testid=token-save]")
    wait_page(page, status_is.format("live"), 30, "the figures once the token is given")
    assert not page.is_visible("[data-testid=token-prompt]")
    page.reload()  # the tab keeps the token
    wait_page(page, status_is.format("live"), 30, "the figures after a reload")
    page.close()

    # A link can carry it in its fragment, which never reaches the server.
    page = browser.new_page()
    asked: list[str] = []
    page.on("request", lambda r: asked.append(r.url))
    page.goto(f"{w1.url}/dashboard#token={token}")
    wait_page(page, status_is.format("live"), 30, "the figures from a link with the token")
    assert page.url == w1.url + "/dashboard"
    assert all(token not in u for u in asked), asked
    page.close()
    assert not problems, problems


def http_get_with(url: str, headers: dict[str, str]) -> tuple[int, Any]:
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())
