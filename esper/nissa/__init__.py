"""Senses: projections over the event store (run state, metrics, narratives, reports)."""

from esper.nissa.narrative import narrate
from esper.nissa.projection import Projection
from esper.nissa.projector import Projector, caught_up
from esper.nissa.transfer import export_runs, import_file

__all__ = ["Projection", "Projector", "caught_up", "export_runs", "import_file", "narrate"]
