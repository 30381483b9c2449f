"""Whether `torchrun` started this process as one of several ranks, read from the environment it sets: torch-free,
so that the command line can refuse what ranks cannot share before anything loads torch."""

import math
import os
import time

import attrs

from esper.errors import BadInput, Terminated

TIMEOUT_S = 600.0
"""Seconds a rank waits in any collective (`ESPER_RANKS_TIMEOUT` overrides): long enough for rank 0 to evaluate an
epoch while the followers wait for its next message, short enough that a lost rank is noticed."""
MAX_TIMEOUT_S = 1e9
"""About 30 years: longer than any collective, and well inside what a timedelta holds."""
DEFER_S = 60.0
"""Longest a follower refusing a command line waits for rank 0 to say why (`defer_to_rank_0`)."""


@attrs.frozen
class Place:
    """Where torchrun put this process: its rank among `world`, its rank on this machine, the collectives' timeout."""

    rank: int
    world: int
    local: int
    timeout_s: float


def _variable(name: str) -> str | None:
    """The variable's value; None if unset or empty (`WORLD_SIZE= esper ...` means no torchrun)."""
    return os.environ.get(name) or None


def _whole(name: str, least: int, default: int | None = None) -> int:
    text = _variable(name)
    if text is None:
        if default is None:
            raise BadInput(f"WORLD_SIZE is set but {name} is not: start the ranks with torchrun, which sets both")
        return default
    try:
        value = int(text)
    except ValueError:
        value = least - 1
    if value < least:
        raise BadInput(f"{name}={text!r} must be a whole number, at least {least}")
    return value


def place() -> Place | None:
    """This process's place when torchrun started it as one of several (None: it runs alone). A variable torchrun
    sets (or ESPER_RANKS_TIMEOUT) that no torchrun would have set is `BadInput` naming it."""
    world = _whole("WORLD_SIZE", 1, default=1)
    if world == 1:
        return None
    rank = _whole("RANK", 0)
    if rank >= world:
        raise BadInput(f"RANK={rank} is not below WORLD_SIZE={world}")
    local = _whole("LOCAL_RANK", 0, default=rank)
    timeout = _variable("ESPER_RANKS_TIMEOUT")
    try:
        timeout_s = TIMEOUT_S if timeout is None else float(timeout)
    except ValueError:
        timeout_s = math.nan
    if not 0 < timeout_s <= MAX_TIMEOUT_S:  # NaN fails too
        raise BadInput(f"ESPER_RANKS_TIMEOUT={timeout!r} must be a positive number of seconds, at most {MAX_TIMEOUT_S:.0e}")
    return Place(rank, world, local, timeout_s)


def _checked() -> tuple[Place | None, str | None]:
    """`place()`, and what is wrong with torchrun's variables instead (None: nothing)."""
    try:
        return place(), None
    except BadInput as exc:
        return None, str(exc)


def launched() -> bool:
    """Whether `torchrun` started this process as one of several; variables that say so wrongly count too
    (`problem` says what is wrong with them)."""
    where, wrong = _checked()
    return where is not None or wrong is not None


def leading() -> bool:
    """Whether this process is rank 0 (or runs alone): the one that speaks for all. With torchrun's variables wrong,
    every process speaks."""
    where, wrong = _checked()
    return wrong is not None or where is None or where.rank == 0


def defer_to_rank_0() -> None:
    """A follower refusing what every rank refuses alike stays until torchrun stops it (at most `DEFER_S`): torchrun
    stops every rank as soon as one ends in error, so a follower that ended first could have rank 0 stopped before
    it said why. Rank 0 (or a process alone) returns at once."""
    if leading():
        return
    try:
        time.sleep(DEFER_S)
    except Terminated:  # torchrun's stop, once rank 0 has ended
        pass


def problem() -> str | None:
    """What is wrong with torchrun's variables as this process sees them (None: nothing). Each rank's are its own,
    so every rank says it."""
    return _checked()[1]


def refusal(args: list[str]) -> str | None:
    """Why the ranks cannot run this command line together (None: they can). Every rank runs the same command line,
    and only a plain `esper run` is one run that the ranks share; anything else would run once per rank (two PPO
    jobs writing one file, each seed's run twice), so it is refused before it starts."""
    if not launched():
        return None
    verb = next((a for a in args if not a.startswith("-")), "")
    alone = sorted({a.split("=", 1)[0] for a in args} & {"--seeds", "--resume", "--print-config"})
    if verb == "run" and not alone:
        return None
    command = " ".join(["esper", verb, *alone[:1]]).strip()
    return f"under torchrun only `esper run` trains, one run shared by the ranks: run `{command}` without torchrun"
