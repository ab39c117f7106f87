"""Faust's worker with our log format (:mod:`pipeline.logs`), one fix (the root logger stays
at the level asked for) and a garbage collector tuned for a long-running worker.

``faust.Worker`` attaches a DEBUG-level spinner handler to the root logger and lowers the root
logger to DEBUG, even under ``-l warn``. Every ``log.debug`` in aiokafka and Faust (several per
record sent) then builds a ``LogRecord`` that is thrown away: about 10% of a busy worker's CPU
in our profile (``make bench``). Upstreamable as is.

Python's cyclic garbage collector looks at its youngest objects every 700 allocations of
container objects. In a busy worker every in-flight record, future and batch lives across a few
such collections, so they pile up in the oldest generation, whose collections then walk the
whole heap (the app, its modules, the tables' caches): 35 to 41 of them per 60,000 events, each
taking about 100 ms of the event loop, 3.9 to 5.0 s of CPU in all, 15-18% of the worker's
(``make bench``). :func:`tune_gc` collects the youngest generation every
``PIPELINE_GC_YOUNG_THRESHOLD`` allocations instead (50,000 by default; short-lived objects are
then gone before they are looked at), and once the worker has started, :func:`freeze_startup`
moves what start-up built, which lives as long as the process, out of the collector's sight.
Reference cycles are still collected, only less often; ``0`` leaves Python's defaults.

Before anything starts, :func:`startup_problem` checks what Faust will really do, whatever
the entry (``python -m pipeline worker``, ``faust -A pipeline.app worker``, a Procfile, the
``orders-pipeline`` script): the web server's bind address once Faust has applied its options
and environment (``-b``, ``--web-bind``, ``WEB_BIND``), refused beyond loopback without
``PIPELINE_API_TOKEN``; and the directories the worker writes to, created with their parents
(Faust's own ``mkdir`` creates no parents). A refused start prints one line and exits 2
before any service has started, so the web server never listens.

The worker also sets the URL it advertises to the other workers (Faust's ``canonical_url``,
where they forward table reads) from ``PIPELINE_WEB_ADVERTISED_URL``, or from the host and the
port Faust's options gave, never a bind-all address (``Settings.advertised_url``).
"""

from __future__ import annotations

import gc
import logging
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import faust

from pipeline import logs
from pipeline.settings import Settings, web_bind_refusal

log = logging.getLogger(__name__)


def tune_gc(young_threshold: int) -> None:
    """Collect the youngest generation every ``young_threshold`` allocations (0: Python's)."""
    if young_threshold:
        gc.set_threshold(young_threshold)


def freeze_startup(young_threshold: int) -> None:
    """Exempt every object alive now from collection (start-up's, kept for the process's life)."""
    if young_threshold:
        gc.collect()
        gc.freeze()


def startup_problem(app: faust.App, settings: Settings) -> str | None:
    """Why this worker must not start, or None once the directories it needs exist."""
    conf = app.conf
    if conf.web_enabled and conf.web_transport.scheme == "tcp":
        refusal = web_bind_refusal(conf.web_bind, settings.api_token)
        if refusal:
            return refusal
    return make_directories(worker_directories(settings, Path(conf.datadir)))


async def declare_topics(settings: Settings) -> None:
    """Create the pipeline's missing topics before the consumer first subscribes.

    Faust subscribes an agent to its redelivery topic with its source; a topic missing at the
    group's first assignment is ignored by the assignor ("Ignoring missing topic") until the
    consumer's metadata next refreshes, minutes later, and a record retried or replayed into it
    meanwhile waits that long (found by the PostgreSQL fault scenario: an order left undecided).
    The runtime declares the topics too, but only once the app is starting, which can be after
    the first assignment. A broker that cannot be reached here is Faust's to report."""
    from aiokafka.errors import KafkaError

    from pipeline.adapters.kafka.admin import create_topics
    from pipeline.streaming.topics import topic_plan

    try:
        outcomes = await create_topics(
            settings, topic_plan(settings), dry_run=False, request_timeout=10.0
        )
    except (KafkaError, OSError, TimeoutError) as exc:
        log.warning("could not declare the topics before starting (%r); Faust will", exc)
        return
    for outcome in outcomes:
        if outcome.state == "problem":
            log.warning("topic %s: %s", outcome.spec.name, outcome.detail)


def worker_directories(settings: Settings, datadir: Path) -> list[tuple[Path, str]]:
    """The directories this worker writes to, each with the setting that places it."""
    dirs = [(datadir, "PIPELINE_STATE_DIR")]
    if "notifications" in settings.agents and not settings.smtp_host and settings.mailbox_dir:
        dirs.append((settings.mailbox_dir, "PIPELINE_MAILBOX_DIR"))
    # A directory placed by default under the data dir is the data dir's to fix.
    return [
        (path, "PIPELINE_DATA_DIR" if path.is_relative_to(settings.data_dir) else name)
        for path, name in dirs
    ]


def make_directories(dirs: Iterable[tuple[Path, str]]) -> str | None:
    """Create each directory with its parents; what to fix for the first that cannot be."""
    for path, setting in dirs:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            return (
                f"cannot create the directory {path} ({setting}): {exc.strerror or exc}; "
                f"point {setting} at a directory this worker can write to"
            )
    return None


class Worker(faust.Worker):
    def __init__(self, app: faust.App, *services: Any, **kwargs: Any) -> None:
        # Faust's worker command has applied its options to app.conf by now (the app is
        # configured before its worker is made), and nothing has started yet.
        from pipeline.app import settings

        problem = startup_problem(app, settings)
        if problem:
            print(f"error: {problem}", file=sys.stderr, flush=True)
            raise SystemExit(2)
        # What peers route table reads to, with the port and host Faust's options gave (its
        # --web-port sets canonical_url from the host it would advertise, even 0.0.0.0).
        advertised = settings.advertised_url(app.conf.web_port, app.conf.web_host)
        app.conf.canonical_url = advertised  # type: ignore[assignment]  # Faust parses a str
        super().__init__(app, *services, **kwargs)

    async def on_first_start(self) -> None:
        from pipeline.app import settings

        tune_gc(settings.gc_young_threshold)
        await declare_topics(settings)
        await super().on_first_start()

    async def on_startup_finished(self) -> None:
        await super().on_startup_finished()
        from pipeline.app import settings

        freeze_startup(settings.gc_young_threshold)

    def _setup_logging(self) -> None:
        super()._setup_logging()
        from pipeline.app import settings

        logs.configure(logging.root, settings.log_format)
        level = logging.INFO if settings.log_events else logging.WARNING
        logging.getLogger("pipeline.trace").setLevel(level)

    def _setup_spinner_handler(self, logger: logging.Logger, level: int) -> None:
        super()._setup_spinner_handler(logger, level)
        if level:
            logger.setLevel(level)
