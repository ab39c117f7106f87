from __future__ import annotations

import pathlib

import pytest

from pipeline.settings import PROJECT_ROOT, Secret, web_bind_refusal


@pytest.mark.parametrize(
    ("bind", "token", "refused"),
    [
        ("127.0.0.1", "", False),
        ("localhost", "", False),
        ("::1", "", False),
        ("0.0.0.0", "", True),
        ("::", "", True),
        ("", "", True),  # aiohttp binds every interface for an empty host
        ("192.0.2.10", "", True),
        ("shop.example.com", "", True),
        ("0.0.0.0", "t0k", False),
        ("192.0.2.10", "t0k", False),
    ],
)
def test_a_public_web_bind_needs_a_token(bind: str, token: str, refused: bool) -> None:
    reason = web_bind_refusal(bind, Secret(token))
    assert (reason is not None) == refused
    if reason:
        assert "PIPELINE_API_TOKEN" in reason and "127.0.0.1" in reason


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
    for command in ("migrate", "kafka", "dlt", "reconcile", "load", "stock", "outbox", "orders",
                    "topics", "forwarder", "worker", "demo"):  # fmt: skip
        assert f"    {command} " in shown, command


def test_one_help_lists_our_commands_and_fausts(capsys: pytest.CaptureFixture[str]) -> None:
    from pipeline.cli.main import OUR_COMMANDS, build_parser

    build_parser("orders-pipeline").print_help()
    shown = capsys.readouterr().out
    assert shown.startswith("usage: orders-pipeline")
    for name in (*OUR_COMMANDS, "worker", "agents", "tables", "reset", "send"):
        assert f"\n    {name} " in shown, name
    assert "Exit status: 0 done, 1" in " ".join(shown.split())


@pytest.mark.parametrize(
    ("argv0", "shown"),
    [
        ("/venv/bin/orders-pipeline", "orders-pipeline"),
        ("/work/pipeline/__main__.py", "python -m pipeline"),
    ],
)
def test_usage_names_the_way_the_command_was_called(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], argv0: str, shown: str
) -> None:
    from pipeline.cli.main import run

    monkeypatch.setattr("sys.argv", [argv0, "migrate", "--no-such-option"])
    with pytest.raises(SystemExit):
        run(["migrate", "--no-such-option"])
    assert capsys.readouterr().err.splitlines()[0].startswith(f"usage: {shown} ")
