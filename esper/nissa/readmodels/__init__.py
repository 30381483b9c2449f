"""Nissa's read models: one module per projection (a fold of each run's events into tables), and the tables
derived from them across runs. `esper.nissa.projector` keeps them caught up with a workspace's log."""

from esper.nissa.readmodels.blueprint_stats import BlueprintStats
from esper.nissa.readmodels.controller_decisions import ControllerDecisions
from esper.nissa.readmodels.epoch_metrics import EpochMetrics
from esper.nissa.readmodels.run_summary import RunSummary
from esper.nissa.readmodels.seed_lifecycle import SeedLifecycle
from esper.nissa.projection import Derived, Projection


def default_projections() -> list[Projection]:
    return [RunSummary(), EpochMetrics(), SeedLifecycle(), ControllerDecisions()]


def default_derived() -> list[Derived]:
    return [BlueprintStats()]


__all__ = [
    "BlueprintStats", "ControllerDecisions", "EpochMetrics", "RunSummary", "SeedLifecycle", "default_derived",
    "default_projections",
]
