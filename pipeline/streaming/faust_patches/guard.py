"""The versions of faust-streaming and aiokafka the patches were tested on.

Every patch replaces a private method, or reads private state, of these packages; each module's
tests pin the stock behaviour it works around. Another release may have fixed the bug, moved
the method or changed what it does, and a patch would then replace code it was never tested
against, silently. So :func:`require_tested_versions` refuses to let the patches be installed
over any other version, unless an operator sets ``PIPELINE_UNTESTED_FAUST=1`` (started anyway,
with a warning in the log). The versions are also pinned in ``constraints.txt`` and bounded in
``pyproject.toml``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from importlib import metadata

log = logging.getLogger(__name__)

# mode-streaming too: the hand-over and flow patches replace its internals (Service.wait_first,
# FlowControlEvent).
TESTED = {"faust-streaming": "0.15.3", "aiokafka": "0.14.0", "mode-streaming": "0.7.1"}

UNTESTED_ALLOWED = "PIPELINE_UNTESTED_FAUST"


def installed_version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def untested_versions() -> dict[str, str | None]:
    """The packages whose installed version (None: not installed) is not the one the patches
    were tested on."""
    found = {package: installed_version(package) for package in TESTED}
    return {package: version for package, version in found.items() if version != TESTED[package]}


def require_tested_versions(environ: Mapping[str, str] = os.environ) -> None:
    """Raise :class:`RuntimeError` unless faust-streaming and aiokafka are the versions in
    :data:`TESTED`, or ``PIPELINE_UNTESTED_FAUST=1`` (then only log a warning)."""
    untested = untested_versions()
    if not untested:
        return
    found = ", ".join(
        f"{package} {version}" if version else f"no {package}"
        for package, version in untested.items()
    )
    tested = ", ".join(f"{package} {version}" for package, version in TESTED.items())
    problem = (
        f"installed {found}, but the Faust patches (pipeline.streaming.faust_patches) were "
        f"tested on {tested}; they replace private methods of these packages"
    )
    if environ.get(UNTESTED_ALLOWED) == "1":
        log.warning("%s. Starting anyway, as %s=1 asks.", problem, UNTESTED_ALLOWED)
        return
    raise RuntimeError(
        f"{problem}. Pin the tested versions (pip install -c constraints.txt), or run "
        f"tests/unit/faust_patches/ and tests/unit/test_send_failures.py against the new "
        f"version, adapt or remove the patches whose tests fail, and record the new version "
        f"in TESTED (pipeline/streaming/faust_patches/guard.py). To start anyway, set "
        f"{UNTESTED_ALLOWED}=1."
    )
