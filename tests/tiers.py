"""The two test tiers: the whole suite (CI, the README's command) and the fast one (`pytest -m "not slow"`).

The fast tier leaves out tests marked `slow` and runs each hypothesis property on fewer generated
examples: every rule is still exercised, less exhaustively. `conftest.py` sets `FAST` before collection."""

FAST = False
FAST_DEFAULT_EXAMPLES = 25
"""Examples of a property that names no count of its own, in the fast tier (hypothesis' default is 100)."""


def examples(n: int) -> int:
    """How many examples a property with `n` in the whole suite gets in this tier."""
    return max(5, n // 4) if FAST else n
