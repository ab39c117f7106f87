"""``python -m pipeline <command>``: our operator commands, else Faust's (``worker``, ...)."""

from __future__ import annotations

import sys


def main() -> int:
    argv = sys.argv[1:]
    from pipeline.cli import OUR_COMMANDS, build_parser, run, web_bind_refusal

    if argv and argv[0] in OUR_COMMANDS:
        return run(argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        # Ours and the worker; Faust's other commands stay reachable by name (send, tables...).
        build_parser().print_help()
        return 0 if argv else 2

    from pipeline.settings import SettingsError, load_settings

    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if argv and argv[0] == "worker":
        refusal = web_bind_refusal(settings, argv[1:])
        if refusal:
            print(f"error: {refusal}", file=sys.stderr)
            return 2
    from pipeline.app import app

    app.main()
    return 0


if __name__ == "__main__":
    sys.exit(main())
