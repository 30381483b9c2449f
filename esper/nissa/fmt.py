"""How numbers read in narratives, reports and terminal summaries. One place, so they all agree."""

import re
from typing import Any


def pct(fraction: float | None, digits: int = 1) -> str:
    """0.8513 → '85.1%'."""
    return "–" if fraction is None else f"{100 * fraction:.{digits}f}%"


def points(fraction: float | None) -> str:
    """An accuracy difference in percentage points: 0.061 → '+6.1 points'."""
    return "–" if fraction is None else f"{100 * fraction:+.1f} points"


def count(n: int | None, sign: bool = False) -> str:
    """Parameter counts: 2304 → '2.3k', 1_250_000 → '1.25M', 1.5e9 → '1.5B' (with `sign`, '+2.3k'). A count goes
    into the next unit where its rounding would reach a thousand of this one ('1M', not '1000.0k')."""
    if n is None:
        return "–"
    prefix = "+" if sign and n > 0 else ("-" if n < 0 else "")
    a = abs(n)
    if a < 1_000:
        text = str(a)
    elif a < 999_950:
        text = f"{a / 1_000:.1f}k"
    elif a < 999_500_000:
        text = f"{a / 1_000_000:.3g}M"
    else:
        text = f"{a / 1_000_000_000:.3g}B"
    return prefix + text


def number(value: Any) -> str:
    """Evidence values: floats to 4 significant digits, the rest as they are."""
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def bits(value: float | None) -> str:
    """A loss in bits per character (the text task's): 3.7564 → '3.756'."""
    return "–" if value is None else f"{value:.3f}"


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def visible(text: str) -> str:
    """Text from a log as a terminal can show it: each control character written as its escape (`\\x1b`, `\\n`),
    not sent, so that a stored string cannot move the cursor, recolour the terminal or break a line or a row."""
    return _CONTROL.sub(lambda match: match.group(0).encode("unicode_escape").decode(), text)
