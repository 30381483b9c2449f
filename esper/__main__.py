"""`python -m esper` and the `esper` command."""

import sys


def main() -> None:
    """The `esper` command. Loading it imports torch, which takes seconds: Ctrl-C in them is one line and exit
    code 130, as it is once the command runs, not a traceback."""
    try:
        from esper.cli import main as command
    except KeyboardInterrupt:
        sys.stderr.write("esper: interrupted\n")
        raise SystemExit(130) from None
    command()


if __name__ == "__main__":  # not when a worker process imports the main module
    main()
