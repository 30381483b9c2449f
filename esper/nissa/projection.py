"""What a read model is, for the projector that keeps it (`esper.nissa.projector`).

A projection is a fold, `apply(state, recorded) -> state`, dispatched on the event's type, over the events of
one run in `seq` order. Its read model is a few tables (`esper.nissa.tables`) whose rows are a pure function of
the folded state (`rows(state)`). The state is a msgspec Struct that round-trips through JSON exactly, so the
projector can keep it in a checkpoint and a catch-up from a checkpoint gives what a rebuild from zero gives.

A `Derived` read model is no fold: it aggregates projections' tables across runs (so its value never depends on
the order in which runs were caught up) and is recomputed whenever they change.
"""

from typing import Any, Callable, ClassVar

import duckdb
import msgspec

from esper.nissa.tables import Table
from esper.store import Recorded


class Projection:
    """A fold over one run's events into rows of `tables`.

    Subclasses map event types to the names of their handler methods in `HANDLERS` (as `RunState` does). `apply`
    gets a `Recorded` (the event with its `seq`, which some read models keep) and dispatches on the type of
    `recorded.event`.
    Raise `version` whenever the rows or the state change shape: the projector then rebuilds the tables.
    """

    name: ClassVar[str]
    version: ClassVar[int]
    tables: ClassVar[tuple[Table, ...]]
    state_type: ClassVar[type]
    HANDLERS: ClassVar[dict[type, str]]
    """Event type → the name of the method that folds it: `method(state, recorded) -> state`."""

    def __init__(self) -> None:
        self._handlers: dict[type, Callable[[Any, Recorded], Any]] = {
            event_type: getattr(self, method) for event_type, method in self.HANDLERS.items()
        }

    def initial(self) -> Any:
        return self.state_type()

    def apply(self, state: Any, recorded: Recorded) -> Any:
        """Fold one event, dispatched on its type (the state is updated in place and returned)."""
        handler = self._handlers.get(type(recorded.event))
        return self.otherwise(state, recorded) if handler is None else handler(state, recorded)

    def otherwise(self, state: Any, recorded: Recorded) -> Any:
        """An event this projection has no handler for: by default it changes nothing."""
        return state

    def rows(self, state: Any) -> dict[str, list[msgspec.Struct]]:
        """Table name → the run's rows (instances of the table's row struct)."""
        raise NotImplementedError

    def encode(self, state: Any) -> str:
        return msgspec.json.encode(state).decode()

    def decode(self, text: str) -> Any:
        return msgspec.json.decode(text, type=self.state_type)


class Derived:
    """A table computed from projections' tables across every run, whenever they change."""

    name: ClassVar[str]
    version: ClassVar[int]
    table: ClassVar[Table]

    def compute(self, con: duckdb.DuckDBPyConnection) -> list[msgspec.Struct]:
        raise NotImplementedError
