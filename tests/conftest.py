from hypothesis import settings

import tiers

settings.register_profile("fast", max_examples=tiers.FAST_DEFAULT_EXAMPLES)


def pytest_configure(config):
    tiers.FAST = "not slow" in (config.option.markexpr or "")
    if tiers.FAST:  # properties that name no count of their own
        settings.load_profile("fast")
