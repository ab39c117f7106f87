"""The command line: our operator commands (:mod:`pipeline.cli.main`) beside Faust's."""

from __future__ import annotations

import sys
from pathlib import Path

SCRIPT = "orders-pipeline"


def prog() -> str:
    """How the user called us, for usage and error lines: the console script that
    ``pip install`` puts on PATH, or ``python -m pipeline``."""
    return SCRIPT if Path(sys.argv[0]).stem == SCRIPT else "python -m pipeline"
