"""What a controller can ask for. Tags are pinned strings: renaming a class never changes the log."""

from typing import Union

import msgspec


class _Command(msgspec.Struct, frozen=True, tag_field="op"):
    pass


class Germinate(_Command, tag="Germinate"):
    """Grow a new seed of `blueprint` in `slot`."""

    slot: str
    blueprint: str


class Advance(_Command, tag="Advance"):
    """Move a seed to its next stage (TRAINING → BLENDING, BLENDING → FOSSILIZED) if its gate opens."""

    seed_id: str


class Cull(_Command, tag="Cull"):
    """Remove a training or blending seed; its slot is embargoed, then free again."""

    seed_id: str
    reason: str = "controller"


class Wait(_Command, tag="Wait"):
    """Do nothing this epoch."""


Command = Union[Germinate, Advance, Cull, Wait]
COMMAND_TYPES: tuple[type, ...] = (Germinate, Advance, Cull, Wait)
