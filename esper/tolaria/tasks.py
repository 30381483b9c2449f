"""Task presets: which host, optimizer and epoch budget each task trains with.

A run records its resolved preset whole in `RunStarted` (`preset`), and re-execution (`--verify`) trains
with the recorded one: changing a preset here changes what new runs do, never what an old log
re-executes to. Logs written before presets were recorded are upcast with a frozen copy of the presets
of their time (`esper.leyline.events`), not with these.
"""

from esper.errors import BadInput
from esper.leyline.config import BLUEPRINTS, SEQUENCE_BLUEPRINTS, TaskPreset  # noqa: F401 - BLUEPRINTS re-exported

TASKS: dict[str, TaskPreset] = {
    preset.name: preset
    for preset in (
        TaskPreset(  # rates and batch size: the heuristic's best point of `benchmarks/tune.py` (seeds 100-109)
            name="mnist1d",
            host="cnn1d",
            batch_size=100,
            optimizer="adam",
            lr=1e-2,
            weight_decay=0.0,
            seed_lr=3e-3,
            epochs=25,
            cpu_threads=1,
            anneal_epochs=5,
            standardise="exact",
        ),
        TaskPreset(
            name="cifar10",
            host="resnet",
            batch_size=128,
            optimizer="sgd",
            lr=0.05,
            weight_decay=5e-4,
            seed_lr=0.01,
            epochs=30,
            augment=True,
        ),
        TaskPreset(  # sized for a run of 1–3 minutes of one CPU thread (40 steps an epoch); rates: the heuristic's
            # best point of `benchmarks/tune.py --task text` (seeds 100-109, batch size kept; docs/notes/growth.md)
            name="text",
            host="transformer",
            host_options={"context": 64},
            batch_size=32,
            optimizer="adam",
            lr=1e-2,
            weight_decay=0.0,
            seed_lr=1e-2,
            epochs=20,
            epoch_windows=1280,
            blueprints=SEQUENCE_BLUEPRINTS,
            cpu_threads=1,
            anneal_epochs=4,
        ),
    )
}
"""Every task Esper knows, by name. `mnist1d` is the default."""

DEFAULT_TASK = "mnist1d"


def get_task(name: str) -> TaskPreset:
    """The preset of task `name`; `BadInput` naming the known tasks if there is none."""
    try:
        return TASKS[name]
    except KeyError:
        raise BadInput(f"unknown task {name!r} (known tasks: {', '.join(TASKS)})") from None
