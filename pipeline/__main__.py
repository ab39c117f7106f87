"""``python -m pipeline <command>``, or the ``orders-pipeline`` console script: our operator
commands, else Faust's (``worker``, ...)."""

from __future__ import annotations

import sys


def main() -> int:
    argv = sys.argv[1:]
    from pipeline.cli import prog
    from pipeline.cli.main import OUR_COMMANDS, build_parser, run

    if argv and argv[0] in OUR_COMMANDS:
        return run(argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        # Ours and Faust's, in one list; Faust's run below.
        build_parser(prog()).print_help()
        return 0 if argv else 2

    from pipeline.settings import SettingsError, load_settings

    try:  # here, a bad setting is one line; from the app's import it would be a traceback
        load_settings()
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    # The web binding is checked where it takes effect, when the worker starts
    # (pipeline.streaming.worker), not here: Faust accepts it in too many forms to read from argv.
    from pipeline.app import app

    app.main()
    return 0


if __name__ == "__main__":
    sys.exit(main())
