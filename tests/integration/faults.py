"""The fault scenarios' harness: a scenario starts workers with fast failover, sets scarce stock,
runs the recorded open-loop load, and at the end has the independent checker
(:mod:`tests.integration.history`) judge the drained system, checks that reconcile agrees, and
prints a line of figures and fault evidence."""

from __future__ import annotations

import signal
import time
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from tests.integration.history import (
    History,
    Load,
    System,
    Verdict,
    read_db,
    set_stock,
    settle,
)
from tests.integration.workers import Worker, WorkerFactory, metric

SKUS = [f"sku-{n}" for n in range(8)]
# Scarce: the load asks for about three times this per SKU, so orders are rejected and their
# reserved lines released (compensation) while the faults happen; cancellations free some again.
STOCK_PER_SKU = 60
WINDOW_SECONDS = 10  # revenue windows: a run spans several, and orders cross their edges
LIFETIME_VALUE = Decimal("300.00")  # some customers reach it, some drop back below it
SUMMARY: list[str] = []  # printed by conftest's pytest_terminal_summary

# Failover within seconds, not Faust's default minute.
FAST_FAILOVER = {
    "PIPELINE_SESSION_TIMEOUT_SECONDS": "6",
    "PIPELINE_HEARTBEAT_SECONDS": "1",
    "PIPELINE_OUTBOX_POLL_INTERVAL": "0.05",
    "PIPELINE_REVENUE_WINDOW_SECONDS": str(WINDOW_SECONDS),
    "PIPELINE_LTV_MILESTONE": str(LIFETIME_VALUE),
}


@dataclass
class Scenario:
    name: str
    workers: WorkerFactory
    env: dict[str, str] = field(default_factory=dict)
    history: History = field(default_factory=History)
    load: Load | None = None
    # Units per SKU: scarce for the scenario's length, so stock runs out under every fault.
    stock: int = STOCK_PER_SKU

    @property
    def system(self) -> System:
        return System(self.workers.bootstrap, self.workers.database_url,
                      self.workers.topic_prefix, self.workers.app_id,
                      window_seconds=WINDOW_SECONDS, lifetime_value=LIFETIME_VALUE)  # fmt: skip

    def start(self, name: str, data_dir: Path | None = None, *, wait: bool = True,
              forwarder: bool = True, code: Path | None = None,
              **extra: str) -> Worker:  # fmt: skip
        env: dict[str, Any] = {**FAST_FAILOVER, **self.env, **extra}
        if not forwarder:
            env["PIPELINE_FORWARDER_ENABLED"] = "false"
        return self.workers.start(name, data_dir=data_dir, wait=wait, code=code, **env)

    def start_pair(self) -> list[Worker]:
        live = [self.start("w1"), self.start("w2")]
        self.stock_up(live[0])
        return live

    def stock_up(self, worker: Worker) -> None:
        """Set every SKU's stock through ``worker``, noted in the history."""
        set_stock(worker, self.history, dict.fromkeys(SKUS, self.stock))

    def run_load(self, targets: Any, rate: float = 15) -> Load:
        self.load = Load(targets, self.history, rate=rate, skus=SKUS).start()
        return self.load

    def kill(self, worker: Worker) -> None:
        """SIGKILL ``worker``, noted in the history."""
        self.history.killed(worker.data_dir / "mailbox")
        worker.stop(signal.SIGKILL)

    def mail_dirs(self) -> list[Path]:
        return [w.data_dir / "mailbox" for w in self.workers.started]

    def finish(self, checker: Worker, evidence: dict[str, Any] | None = None, *,
               expect_rejections: bool = True) -> Verdict:  # fmt: skip
        """Stop the load, wait for the system to drain, and judge it: every violation fails the
        test; reconcile must agree; a line of figures and evidence goes to the summary."""
        assert self.load is not None
        self.load.stop()
        assert self.history.acked_orders(), f"no order was acknowledged: {self.history.refused()}"
        verdict, seconds = settle(self.system, self.history, checker, self.mail_dirs,
                                  changelogs=True)  # fmt: skip
        assert verdict.ok, f"{self.name}: {verdict}\n{self.diagnose(checker)}"
        report = reconciled(checker)
        assert report is not None and report["ok"], f"reconcile disagrees: {report}"
        rows = read_db(self.workers.database_url).orders.values()
        rejected = sum(1 for r in rows if r.status == "rejected")
        assert rejected or not expect_rejections, "stock never ran out: no compensation ran"
        self.summarize(verdict, seconds, rejected, evidence or {})
        return verdict

    def rebuild(self, name: str = "rebuilt") -> Verdict:
        """Stop every worker, start one on empty state (its tables come from the changelogs
        alone) and judge again through it."""
        for worker in self.workers.started:
            assert worker.stop() in (0, -9), f"{worker.name} did not stop cleanly"
        fresh = self.start(name)
        verdict, _ = settle(self.system, self.history, fresh, self.mail_dirs, timeout=120)
        assert verdict.ok, f"{self.name}, rebuilt from the changelogs: {verdict}"
        return verdict

    def diagnose(self, checker: Worker) -> str:
        out = [f"reconcile: {reconciled(checker, attempts=1)}"]
        for w in self.workers.started:
            out.append(f"--- {w.name} (exit {w.proc.poll()}) {w.log_path}\n{w.log()[-3000:]}")
        return "\n".join(out)

    def summarize(self, verdict: Verdict, seconds: float, rejected: int,
                  extra: dict[str, Any]) -> None:  # fmt: skip
        h, e = self.history, verdict.evidence
        db = "postgresql" if self.workers.database_url.startswith("postgresql") else "sqlite"
        shown = " ".join(f"{k}={v}" for k, v in extra.items())
        SUMMARY.append(
            f"{self.name:<32} {db:<10} requests {len(h.ops):>4} acked {len(h.acked_orders()):>4} "
            f"unanswered {h.refused().get(0, 0):>3} refused {sum(h.refused().values()):>3} "
            f"rejected {rejected:>3} | re-sent {e['forwarder_resends']:>3} "
            f"redelivered {sum(e['redelivered'].values()):>3} "
            f"stale changelog {sum(e['stale_changelog'].values()):>3} "
            f"mail repeats after a kill {e['mail_repeats_after_a_kill']} | {shown} "
            f"drained in {seconds:4.1f}s"
        )


def reconciled(worker: Worker, attempts: int = 30) -> dict[str, Any] | None:
    """Reconcile's report from ``worker`` (it may be busy rebalancing for a moment)."""
    for _ in range(attempts):
        try:
            status, report = worker.get("/admin/reconcile")
        except OSError:
            status, report = 0, None
        if status == 200:
            return report
        time.sleep(1)
    return None


def events_handled(worker: Worker) -> float:
    """Events the worker's agents handled, from its ``/metrics`` (0 while it does not answer):
    what shows that a worker joining under load took a share of the work."""
    try:
        text = worker.metrics()
    except OSError:
        return 0.0
    return sum(metric(text, "pipeline_events_processed_total", agent=agent) or 0
               for agent in ("inventory", "analytics", "order-status"))  # fmt: skip
