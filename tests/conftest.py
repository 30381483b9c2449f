import os
import sys
from pathlib import Path

# Keep compiled test modules between runs even where PYTHONDONTWRITEBYTECODE is set: rewriting every test
# module's asserts and compiling the package again cost each pytest worker ~4 s of a ~60 s fast tier.
sys.dont_write_bytecode = False

# Generated data (mnist1d) is cached for the whole suite, its subprocesses included, in the checkout rather than
# the user's home: made once on a fresh clone, read back by every later run (a test wanting a cold cache points
# ESPER_CACHE elsewhere).
os.environ["ESPER_CACHE"] = str(Path(__file__).resolve().parent.parent / ".test-cache")

import torch  # noqa: E402
from hypothesis import settings  # noqa: E402

import tiers  # noqa: E402

settings.register_profile("fast", max_examples=tiers.FAST_DEFAULT_EXAMPLES)


def pytest_configure(config):
    tiers.FAST = "not slow" in (config.option.markexpr or "")
    if tiers.FAST:  # properties that name no count of their own
        settings.load_profile("fast")
    # The tests train tiny models, where a second intra-op thread only adds synchronisation, and pytest runs a
    # worker per core: more threads would oversubscribe the cores (a CPU run does the same: TaskPreset.cpu_threads)
    torch.set_num_threads(1)
