"""Whether `torchrun` started this process as one of several ranks, read from the environment it sets: torch-free,
so that the command line can refuse what ranks cannot share before anything loads torch."""

import os


def launched() -> bool:
    """Whether `torchrun` started this process as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def leading() -> bool:
    """Whether this process is rank 0 (or runs alone): the one that speaks for all."""
    return os.environ.get("RANK", "0") == "0"


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
