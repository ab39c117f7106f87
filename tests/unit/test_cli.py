from __future__ import annotations

import pathlib

import pytest

from pipeline.cli import web_bind_refusal
from pipeline.settings import PROJECT_ROOT, load_settings


@pytest.mark.parametrize(
    ("env", "argv", "refused"),
    [
        ({}, [], False),
        ({}, ["--web-bind", "0.0.0.0"], True),
        ({}, ["--web-bind=192.0.2.10"], True),
        ({}, ["-b", "::"], True),
        ({"PIPELINE_WEB_HOST": "0.0.0.0"}, [], True),
        ({"PIPELINE_WEB_HOST": "0.0.0.0", "PIPELINE_API_TOKEN": "t0k"}, [], False),
        ({"PIPELINE_API_TOKEN": "t0k"}, ["--web-bind", "0.0.0.0"], False),
        ({}, ["--web-bind", "localhost"], False),
        ({}, ["--web-bind", "::1"], False),
    ],
)
def test_a_public_web_bind_needs_a_token(
    env: dict[str, str], argv: list[str], refused: bool
) -> None:
    reason = web_bind_refusal(load_settings(env), argv)
    assert (reason is not None) == refused
    if reason:
        assert "PIPELINE_API_TOKEN" in reason


def test_agents_and_tables_are_this_projects_packages() -> None:
    import agents
    import tables

    for module in (agents, tables):
        assert pathlib.Path(module.__file__ or "").resolve().is_relative_to(PROJECT_ROOT)


def test_help_lists_every_operator_command(capsys: pytest.CaptureFixture[str]) -> None:
    import sys

    from pipeline.__main__ import main

    argv, sys.argv = sys.argv, ["pipeline", "--help"]
    try:
        assert main() == 0
    finally:
        sys.argv = argv
    shown = capsys.readouterr().out
    for command in ("migrate", "kafka", "dlt", "reconcile", "load", "stock", "outbox", "topics",
                    "forwarder", "worker", "demo"):  # fmt: skip
        assert f"    {command} " in shown, command
