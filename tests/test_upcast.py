"""Old payloads keep decoding after an event type changes (esper.leyline.upcast)."""

from typing import Union

import msgspec
import pytest
from hypothesis import given, settings

from esper.errors import IllegalEvent
from esper.leyline import EVENT_TYPES, EpochEnded, decode, encode
from esper.leyline.upcast import UPCASTERS, Mapper, current_version, upcaster

from strategies import EVENTS_BY_TYPE, events

# A toy event type that changed twice, standing in for a real one:
#   v1  {"type": "Scored", "epoch": 3, "acc_percent": 87.5}
#   v2  the accuracy became a fraction: `accuracy` 0..1
#   v3  a required `split` was added; every v1/v2 score was on the validation split


class Scored(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag="Scored"):
    schema_version: int = 3
    epoch: int | None = None
    accuracy: float
    split: str


class Noted(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag="Noted"):
    schema_version: int = 1
    epoch: int | None = None
    text: str


ToyEvent = Union[Scored, Noted]


def upcast_scored_v1_v2(data: dict) -> dict:
    data["accuracy"] = data.pop("acc_percent") / 100
    return data


def upcast_scored_v2_v3(data: dict) -> dict:
    return {**data, "split": "val"}


@pytest.fixture
def toy() -> Mapper:
    registry: dict = {}
    upcaster("Scored", 1, registry)(upcast_scored_v1_v2)
    upcaster("Scored", 2, registry)(upcast_scored_v2_v3)
    return Mapper(ToyEvent, registry)


def test_a_v1_payload_decodes_through_the_chain(toy: Mapper):
    v1 = b'{"type": "Scored", "schema_version": 1, "epoch": 3, "acc_percent": 87.5}'
    assert toy.decode(v1) == Scored(epoch=3, accuracy=0.875, split="val")


def test_a_v2_payload_takes_only_the_last_step(toy: Mapper):
    v2 = b'{"type": "Scored", "schema_version": 2, "epoch": 3, "accuracy": 0.5}'
    assert toy.decode(v2) == Scored(epoch=3, accuracy=0.5, split="val")


def test_a_current_payload_is_decoded_as_is(toy: Mapper):
    event = Scored(epoch=1, accuracy=0.25, split="test")
    assert toy.decode(msgspec.json.encode(event)) == event
    assert toy.decode(b'{"type": "Noted", "schema_version": 1, "text": "hi"}') == Noted(text="hi")


def test_an_old_payload_that_the_strict_decoder_accepts_is_still_upcast(toy: Mapper):
    # v2 has the v3 shape except `split`; give it one and it decodes strictly, but with the wrong version.
    v2 = b'{"type": "Scored", "schema_version": 2, "accuracy": 0.5, "split": "train"}'
    event = toy.decode(v2)
    assert event.schema_version == 3
    assert event.split == "val"  # the upcaster ran; real v2 payloads never said otherwise


def test_a_missing_step_and_a_future_version_are_named(toy: Mapper):
    bare = Mapper(ToyEvent, {})
    with pytest.raises(IllegalEvent, match="no upcaster from v1 to v2"):
        bare.decode(b'{"type": "Scored", "schema_version": 1, "acc_percent": 10}')
    with pytest.raises(IllegalEvent, match="newer Esper"):
        toy.decode(b'{"type": "Noted", "schema_version": 2, "text": "from the future"}')


def test_a_payload_that_is_wrong_at_its_own_version_fails_loudly(toy: Mapper):
    with pytest.raises(msgspec.ValidationError):
        toy.decode(b'{"type": "Scored", "schema_version": 3, "accuracy": "high", "split": "val"}')
    with pytest.raises(msgspec.ValidationError):
        toy.decode(b'{"type": "Unknown", "schema_version": 1}')


def test_a_step_registers_once():
    registry: dict = {}
    upcaster("Scored", 1, registry)(upcast_scored_v1_v2)
    with pytest.raises(ValueError, match="already has an upcaster"):
        upcaster("Scored", 1, registry)(upcast_scored_v1_v2)


def test_every_real_event_type_has_its_upcasters():
    """A type at version n needs steps 1→2 … (n-1)→n, or its old logs stop replaying."""
    for cls in EVENT_TYPES:
        tag = cls.__struct_config__.tag
        missing = [v for v in range(1, current_version(cls)) if (tag, v) not in UPCASTERS]
        assert not missing, f"{tag} has no upcaster from version(s) {missing}"


@settings(max_examples=150, deadline=None)
@given(events)
def test_decode_inverts_encode(event):
    assert decode(encode(event)) == event


def test_the_shared_strategy_covers_every_event_type():
    assert set(EVENTS_BY_TYPE) == set(EVENT_TYPES), "add a strategy to tests/strategies.py for the new type"


def test_the_real_decode_upcasts(monkeypatch: pytest.MonkeyPatch):
    """The same path through `esper.leyline.decode`: pretend EpochEnded is at v2 with a renamed field."""
    import esper.leyline.events as events_module

    registry: dict = {}

    @upcaster("EpochEnded", 1, registry)
    def upcast_epoch_ended_v1_v2(data: dict) -> dict:
        data["val_accuracy"] = data.pop("val_acc")
        return data

    mapper = Mapper(events_module.Event, registry)
    mapper._current[EpochEnded] = 2
    monkeypatch.setattr(events_module, "_mapper", mapper)
    v1 = b'{"type":"EpochEnded","schema_version":1,"epoch":4,"train_loss":1.0,"val_loss":1.5,"val_acc":0.5,"params":10}'
    event = decode(v1)
    assert isinstance(event, EpochEnded)
    assert (event.epoch, event.val_accuracy, event.schema_version) == (4, 0.5, 2)
