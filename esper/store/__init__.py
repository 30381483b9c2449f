"""The event store: append-only DuckDB files, one per writing process, read together as one `events` view."""

from esper.store.recorder import Pending, Recorded, Recorder
from esper.store.workspace import Reader, Workspace, default_workspace

__all__ = ["Pending", "Recorded", "Recorder", "Reader", "Workspace", "default_workspace"]
