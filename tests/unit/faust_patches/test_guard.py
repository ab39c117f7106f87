"""The patches are installed only over the faust-streaming and aiokafka versions they were tested
on (:mod:`pipeline.streaming.faust_patches.guard`)."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from types import ModuleType

import pytest

from pipeline.streaming import faust_patches
from pipeline.streaming.faust_patches import guard

ROOT = Path(__file__).resolve().parents[3]


def _installed(monkeypatch: pytest.MonkeyPatch, **versions: str) -> None:
    """Pretend the installed versions are the tested ones, but for ``versions``
    (``faust_streaming="0.16.0"``)."""
    found = {**guard.TESTED, **{name.replace("_", "-"): v for name, v in versions.items()}}
    monkeypatch.setattr(guard, "installed_version", found.__getitem__)


def test_the_tested_versions_install_without_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    _installed(monkeypatch)
    with caplog.at_level(logging.WARNING, logger=guard.__name__):
        guard.require_tested_versions(environ={})
        faust_patches.install()
    assert caplog.records == []


@pytest.mark.parametrize(
    ("package", "version"), [("faust-streaming", "0.16.0"), ("aiokafka", "0.13.0")]
)
def test_another_version_is_refused_naming_the_package(
    monkeypatch: pytest.MonkeyPatch, package: str, version: str
) -> None:
    _installed(monkeypatch, **{package.replace("-", "_"): version})
    with pytest.raises(RuntimeError) as refused:
        guard.require_tested_versions(environ={})
    message = str(refused.value)
    assert f"installed {package} {version}," in message
    assert "tested on faust-streaming 0.15.3, aiokafka 0.14.0" in message
    assert "constraints.txt" in message and "in TESTED" in message
    assert "PIPELINE_UNTESTED_FAUST=1" in message


def test_install_refuses_before_patching_anything(monkeypatch: pytest.MonkeyPatch) -> None:
    _installed(monkeypatch, aiokafka="0.15.0")
    monkeypatch.delenv(guard.UNTESTED_ALLOWED, raising=False)
    patched: list[str] = []
    for name, module in vars(faust_patches).items():
        if isinstance(module, ModuleType) and hasattr(module, "install"):
            monkeypatch.setattr(module, "install", lambda name=name: patched.append(name))
    with pytest.raises(RuntimeError, match=re.escape("installed aiokafka 0.15.0")):
        faust_patches.install()
    assert patched == []
    monkeypatch.setenv(guard.UNTESTED_ALLOWED, "1")
    faust_patches.install()
    assert "offsets" in patched and "flow" in patched and len(patched) >= 12


def test_a_missing_package_is_refused_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(guard.metadata, "version", _not_installed)
    with pytest.raises(
        RuntimeError, match="installed no faust-streaming, no aiokafka, no mode-streaming, but"
    ):
        guard.require_tested_versions(environ={})


def _not_installed(package: str) -> str:
    raise guard.metadata.PackageNotFoundError(package)


def test_the_escape_hatch_starts_anyway_with_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    _installed(monkeypatch, faust_streaming="0.16.0")
    with caplog.at_level(logging.WARNING, logger=guard.__name__):
        guard.require_tested_versions(environ={"PIPELINE_UNTESTED_FAUST": "1"})
    [warning] = caplog.records
    assert warning.levelno == logging.WARNING
    assert "installed faust-streaming 0.16.0" in warning.getMessage()
    assert "PIPELINE_UNTESTED_FAUST=1" in warning.getMessage()


def test_the_escape_hatch_takes_only_1(monkeypatch: pytest.MonkeyPatch) -> None:
    _installed(monkeypatch, faust_streaming="0.16.0")
    with pytest.raises(RuntimeError):
        guard.require_tested_versions(environ={"PIPELINE_UNTESTED_FAUST": "0"})


def test_the_tested_versions_are_the_pinned_and_bounded_ones() -> None:
    constraints = (ROOT / "constraints.txt").read_text()
    pyproject = (ROOT / "pyproject.toml").read_text()
    for package, version in guard.TESTED.items():
        assert re.search(rf"^{re.escape(package)}=={re.escape(version)}$", constraints, re.M)
        assert re.search(rf'"{re.escape(package)}(\[\w+\])?>={re.escape(version)},<', pyproject)


def test_this_environment_has_the_tested_versions() -> None:
    """The unit tests pin the stock behaviour of exactly these versions."""
    assert guard.untested_versions() == {}
