"""Contracts: stages, commands, events, configs. Everything else depends on this, it depends on nothing."""

from esper.leyline.commands import COMMAND_TYPES, Advance, Command, Cull, Germinate, Wait
from esper.leyline.config import HeuristicConfig, LifecycleConfig, RunConfig
from esper.leyline.events import (
    EVENT_TYPES,
    CheckpointSaved,
    CommandIssued,
    CommandRejected,
    EpochEnded,
    Event,
    PolicyUpdated,
    RunFailed,
    RunFinished,
    RunResumed,
    RunStarted,
    SeedGerminated,
    SeedTelemetry,
    SeedTransitioned,
    decode,
    encode,
    type_name,
)
from esper.leyline.stages import ACTIVE_STAGES, LIVE_STAGES, SeedStage

__all__ = [
    "ACTIVE_STAGES", "Advance", "COMMAND_TYPES", "CheckpointSaved", "Command", "CommandIssued",
    "CommandRejected", "Cull", "EVENT_TYPES", "EpochEnded", "Event", "Germinate", "HeuristicConfig",
    "LIVE_STAGES", "LifecycleConfig", "PolicyUpdated", "RunConfig", "RunFailed", "RunFinished", "RunResumed", "RunStarted",
    "SeedGerminated", "SeedStage", "SeedTelemetry", "SeedTransitioned", "Wait", "decode", "encode",
    "type_name",
]
