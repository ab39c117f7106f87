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
"""

from __future__ import annotations

import gc
import logging

import faust

from pipeline import logs


def tune_gc(young_threshold: int) -> None:
    """Collect the youngest generation every ``young_threshold`` allocations (0: Python's)."""
    if young_threshold:
        gc.set_threshold(young_threshold)


def freeze_startup(young_threshold: int) -> None:
    """Exempt every object alive now from collection (start-up's, kept for the process's life)."""
    if young_threshold:
        gc.collect()
        gc.freeze()


class Worker(faust.Worker):
    async def on_first_start(self) -> None:
        from pipeline.app import settings

        tune_gc(settings.gc_young_threshold)
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
