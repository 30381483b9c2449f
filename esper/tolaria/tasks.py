"""Task presets: which host, optimizer and epoch budget each task trains with.

A preset is code, not run state: a run records only its task's name (`RunConfig.task`), and the
preset of that name supplies the rest. Changing a preset's numbers therefore changes what an old
run would re-execute to; treat them as fixed once runs depend on them.
"""

import msgspec

from esper.errors import BadInput

BLUEPRINTS: tuple[str, ...] = ("conv_heavy", "conv_light", "depthwise", "attention", "norm")
"""Every seed blueprint Kasmina offers, in a stable order: the order the heuristic rotates through, the
highest-capacity seed first (growth pays most when the big seed arrives early)."""


class TaskPreset(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How one task trains by default."""

    name: str
    """The task's name, as given to `esper run --task`."""
    host: str
    """Name of the Kasmina host model: `cnn1d` for 1-D signals, `resnet` for images."""
    batch_size: int
    """Examples per training batch (evaluation may use larger batches)."""
    optimizer: str
    """Host optimizer: `adam` or `sgd` (with `momentum`, Nesterov)."""
    lr: float
    """Host learning rate."""
    weight_decay: float
    """L2 weight decay of the host optimizer (also applied to the seeds' optimizer)."""
    seed_lr: float
    """Learning rate of the seeds' own optimizer (same kind as the host's) while they train in isolation."""
    epochs: int
    """Default epoch budget, used when a run asks for 0 epochs."""
    blueprints: tuple[str, ...] = BLUEPRINTS
    """Blueprints a controller may germinate on this task."""
    momentum: float = 0.9
    """SGD momentum; unused by `adam`."""
    cpu_threads: int = 0
    """Torch threads on CPU (0: torch's default). Tiny models run fastest on one thread: more threads
    only add synchronisation, and on a busy machine they make each step several times slower."""
    augment: bool = False
    """Whether the trainer applies `esper.tolaria.data.augment` (random crop + flip) to training batches."""
    anneal_epochs: int = 0
    """Default of `RunConfig.anneal_epochs`: the run's last N epochs lower every learning rate towards 0
    (0: constant). Without it the final accuracy is whatever the last epoch's steps left: on mnist1d it
    moved 3.4 points on average between the last two epochs."""


TASKS: dict[str, TaskPreset] = {
    preset.name: preset
    for preset in (
        TaskPreset(
            name="mnist1d",
            host="cnn1d",
            batch_size=128,
            optimizer="adam",
            lr=3e-3,
            weight_decay=0.0,
            seed_lr=3e-3,
            epochs=25,
            cpu_threads=1,
            anneal_epochs=5,
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
