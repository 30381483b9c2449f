"""What every benchmark script shares (but gpu.py, which installs what it needs before it can import Esper): its
parser, the types of its arguments, the evaluation and tuning seeds, and how it ends.

A script is run as `run(main)`: bad input is one line on stderr and exit code 2, refused before any long work starts
(an argument's type refuses it as it is parsed; a check across arguments raises `BadInput` before the first run);
Ctrl-C is one line and exit code 130. Nothing here imports torch.
"""

import argparse
import math
import sys
from pathlib import Path
from typing import Callable, NoReturn

from esper.errors import BadInput, first_line

EVALUATION_SEEDS = range(20)
"""The seeds the benchmarks evaluate on (results.py's 0–19, frontier.py's 0–4): no choice is ever tuned on one."""
TUNING_SEEDS = list(range(100, 110))
"""The seeds a recipe or a way of growing is chosen on (tune.py, frontier.py, widen.py, stack.py on mnist1d)."""


def say(line: str) -> None:
    """Progress, on stderr: stdout holds the script's result alone."""
    print(line, file=sys.stderr, flush=True)


class Parser(argparse.ArgumentParser):
    """A script's parser: its `--help` opens with the first paragraph of the script's docstring, and a bad argument
    is one line (`tune: argument --workers: ...`, exit code 2, as `run` says any other bad input), not the usage."""

    def __init__(self, doc: str | None, **kwargs) -> None:
        super().__init__(description=first_paragraph(doc or ""), **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{script_name()}: {message}\n")


def script_name() -> str:
    """The running script's name, without `.py`: how its every refusal begins."""
    return Path(sys.argv[0]).stem


def first_paragraph(doc: str) -> str:
    """The docstring's text up to its first blank line, on one line."""
    return " ".join(doc.strip().split("\n\n")[0].split())


def run(main: Callable[[], None]) -> None:
    """Call a script's `main`: `BadInput` (a check of its arguments, or a library's refusal) ends it with one line on
    stderr and exit code 2; Ctrl-C with one line and exit code 130."""
    name = script_name()
    try:
        main()
    except BadInput as exc:
        print(f"{name}: {first_line(exc)}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        raise SystemExit(130) from None


# ---- the types of arguments: each refuses a bad value as it is parsed ----------------------------


def integer(minimum: int) -> Callable[[str], int]:
    """The type of a count that must be at least `minimum`."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value
    return parse


positive_int = integer(1)
non_negative_int = integer(0)


def number(positive: bool) -> Callable[[str], float]:
    """The type of a finite number above zero (`positive`) or at least zero."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(value) or value < 0 or (positive and value == 0):
            raise argparse.ArgumentTypeError(f"must be a {'positive' if positive else 'non-negative'} finite number, "
                                             f"got {text}")
        return value
    return parse


positive_float = number(positive=True)
non_negative_float = number(positive=False)


def integers(minimum: int) -> Callable[[str], list[int]]:
    """The type of a comma-separated list of counts, each at least `minimum`: `0,1,2`."""
    one = integer(minimum)

    def parse(text: str) -> list[int]:
        return [one(item) for item in text.split(",")]
    return parse


def tuning_seed(text: str) -> int:
    """The type of a seed a choice is tuned on: never one of the evaluation seeds."""
    seed = non_negative_int(text)
    if seed in EVALUATION_SEEDS:
        raise argparse.ArgumentTypeError(
            f"{seed} is one of the evaluation seeds {EVALUATION_SEEDS[0]}-{EVALUATION_SEEDS[-1]}, which no choice is "
            f"tuned on: tune on others (default {TUNING_SEEDS[0]}-{TUNING_SEEDS[-1]})")
    return seed


def existing_file(text: str) -> str:
    """The type of a file the script reads (a policy): there before anything is recorded."""
    if not Path(text).is_file():
        raise argparse.ArgumentTypeError(f"no file {text}")
    return text


def output_file(text: str) -> Path:
    """The type of a file the script writes at its end (a page, a chart): one it can write, checked now, not after
    an hour of runs. Its folder is made when it is written (`write`)."""
    from esper.nissa.files import check_output

    try:
        check_output(Path(text))
    except BadInput as exc:
        raise argparse.ArgumentTypeError(first_line(exc)) from None
    return Path(text)


def write(path: Path, text: str) -> None:
    """Write an output file (`output_file`), its folder made first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    say(f"wrote {path}")
