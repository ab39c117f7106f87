"""HTTP views served by every worker.

Reads of table state are routed to the worker that owns the key (``table_route``), so any
worker answers any read. Errors are ``{"error": "<code>", "detail": ...}``.
"""

from __future__ import annotations

from typing import Any

from faust.web import Request, Response, View

from pipeline.app import app
from tables.customer_stats import customer_stats_table, read_customer_stats


def error(view: View, status: int, code: str, detail: Any) -> Response:
    return view.json({"error": code, "detail": detail}, status=status)


@app.page("/healthz")
class Health(View):
    """Liveness: the process is up and its event loop answers."""

    async def get(self, request: Request) -> Response:
        return self.json({"status": "ok"})


@app.page("/readyz")
class Ready(View):
    """Readiness: partitions assigned and tables recovered, so reads are answered here."""

    async def get(self, request: Request) -> Response:
        recovered = app.tables.recovery.completed.is_set()  # type: ignore[attr-defined]
        if app.rebalancing or not recovered:
            return self.json(
                {"status": "starting", "rebalancing": app.rebalancing, "recovered": recovered},
                status=503,
                headers={"Retry-After": "1"},
            )
        return self.json({"status": "ready"})


@app.page("/customers/{customer_id}/stats")
class CustomerStatsView(View):
    """``GET /customers/{customer_id}/stats``: answered by the worker owning the customer."""

    # Faust types view handlers without path parameters; aiohttp passes them as kwargs.
    @app.table_route(table=customer_stats_table, match_info="customer_id")  # type: ignore[arg-type]
    async def get(self, request: Request, customer_id: str) -> Response:
        stats = read_customer_stats(customer_id)
        if stats is None:
            return error(self, 404, "not_found", f"no orders seen for customer {customer_id!r}")
        return self.json(stats.public())
