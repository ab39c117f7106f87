"""Faust's worker with our log format (:mod:`pipeline.logs`) and one fix: the root logger
stays at the level asked for.

``faust.Worker`` attaches a DEBUG-level spinner handler to the root logger and lowers the root
logger to DEBUG, even under ``-l warn``. Every ``log.debug`` in aiokafka and Faust (several per
record sent) then builds a ``LogRecord`` that is thrown away: about 10% of a busy worker's CPU
in our profile (``make bench``). Upstreamable as is.
"""

from __future__ import annotations

import logging

import faust

from pipeline import logs


class Worker(faust.Worker):
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
