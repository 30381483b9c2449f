"""Old logs keep replaying after an event type changes: upcasters, chained on load.

A type that changes shape bumps the default of its `schema_version` and registers one function per
step, which rewrites a payload (a plain dict) of the old version into the shape of the next:

    class EpochEnded(_Event, tag="EpochEnded"):
        schema_version: int = 2
        ...

    @upcaster("EpochEnded", from_version=1)
    def upcast_epoch_ended_v1_v2(data: dict) -> dict:
        data["val_accuracy"] = data.pop("val_acc_percent") / 100
        return data

`Mapper.decode` takes the fast path for every payload already at its class's version: one strict
msgspec decode. Only a payload that is older (or that the strict decoder refuses) is decoded into a
dict, run through the chain `v1 → v2 → … → current`, and converted into the event.
"""

from typing import Any, Callable

import msgspec

from esper.errors import IllegalEvent

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]

UPCASTERS: dict[tuple[str, int], Upcaster] = {}
"""(event tag, from_version) → the function that lifts a payload of that version to the next one."""


def upcaster(tag: str, from_version: int, registry: dict[tuple[str, int], Upcaster] = UPCASTERS):
    """Decorator: register `fn` as the upcaster of `tag` payloads from `from_version` to `from_version + 1`."""

    def register(fn: Upcaster) -> Upcaster:
        if (tag, from_version) in registry:
            raise ValueError(f"{tag} already has an upcaster from v{from_version}")
        registry[(tag, from_version)] = fn
        return fn

    return register


def current_version(cls: type[msgspec.Struct]) -> int:
    """The `schema_version` a class writes: the default of its field."""
    for field in msgspec.structs.fields(cls):
        if field.name == "schema_version":
            return field.default
    raise TypeError(f"{cls.__name__} has no schema_version field")


class Mapper:
    """Payload bytes → an event of the tagged `union`, upcasting old versions on the way."""

    def __init__(self, union: Any, upcasters: dict[tuple[str, int], Upcaster] = UPCASTERS):
        self.union = union
        self.upcasters = upcasters
        self.tag_field = union.__args__[0].__struct_config__.tag_field
        self._strict = msgspec.json.Decoder(union)
        self._as_dict = msgspec.json.Decoder(dict[str, Any])
        self._classes = {cls.__struct_config__.tag: cls for cls in union.__args__}
        self._current = {cls: current_version(cls) for cls in union.__args__}

    def decode(self, payload: bytes | str) -> Any:
        try:
            event = self._strict.decode(payload)
        except msgspec.ValidationError:
            return self._decode_old(payload)
        if event.schema_version != self._current[type(event)]:
            return self._decode_old(payload)
        return event

    def _decode_old(self, payload: bytes | str) -> Any:
        data = self._as_dict.decode(payload)
        tag = data.get(self.tag_field)
        cls = self._classes.get(tag)
        if cls is None:  # not ours at all: let msgspec say what is wrong
            return self._strict.decode(payload)
        version, target = data.get("schema_version", 1), self._current[cls]
        if version > target:
            raise IllegalEvent(f"{tag} v{version} was written by a newer Esper (this one knows up to v{target})")
        while version < target:
            step = self.upcasters.get((tag, version))
            if step is None:
                raise IllegalEvent(f"{tag} v{version} cannot be read: no upcaster from v{version} to v{version + 1}")
            try:
                data = step(data)
            except (KeyError, TypeError, ValueError, AttributeError) as exc:  # a payload the old shape never had
                raise IllegalEvent(f"{tag} v{version} cannot be upcast: {type(exc).__name__} {exc}") from None
            version += 1
            data["schema_version"] = version
        return msgspec.convert(data, self.union)
